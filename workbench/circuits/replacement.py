"""The local replacement model of one prompt (Dunefsky et al.; Anthropic's circuit-tracer).

The model's own forward pass, with
  - each MLP's output (mlp.hook_out) replaced by what the replacement's features decode into it, plus an error
    term (the MLP's true output minus that reconstruction), so nothing is lost: with the errors the replacement
    reproduces the model's logits exactly;
  - each MLP that nothing decodes into kept whole as an error term;
  - attention patterns and every norm's per-position factor frozen at their values on this prompt.
Frozen, the residual stream is an affine function of the sources (token embeddings, feature activations, error
terms), which is what makes attribution exact (attribute.py).

A replacement is a `TranscoderSet` (one transcoder per MLP layer, any subset of layers) or a `CLTReplacement` (a
cross-layer transcoder); `decode_into(layer, ...)` is the one place that says which features write where.
Every family in workbench/models/families.py is supported (Llama/Qwen, Gemma, GPT-2, NeoX): LayerNorm and RMSNorm
factors are frozen alike (LayerNorm's centring is linear), Gemma's post-attention norm is frozen on the attention
path and its post-MLP norm sits inside mlp.hook_out, which transcoders replace, and NeoX's MLP reads the block
input. Gemma 2's final logit soft-capping is not applied: targets are read before it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch

from workbench.dictionaries.base import SparseCoder
from workbench.dictionaries.clt import CrossLayerTranscoder
from workbench.models import families

# The Hugging Face models here are typed `Any`: their config fields and submodules (model.layers, self_attn.v_proj,
# ...) are per-architecture attributes that torch's stubs type as `Tensor | Module`.


@dataclass
class TranscoderSet:
    """One transcoder per replaced MLP layer: layer l's features read mlp.hook_in and write mlp.hook_out of l."""

    coders: dict[int, SparseCoder]

    @property
    def layers(self) -> list[int]:
        return sorted(self.coders)

    def encode(self, layer: int, mlp_in: torch.Tensor) -> torch.Tensor:
        return self.coders[layer].encode(mlp_in)

    def pre_activations(self, layer: int, mlp_in: torch.Tensor) -> torch.Tensor:
        return self.coders[layer].pre_activations(mlp_in)

    def decode_into(self, layer: int, features: dict[int, torch.Tensor], mlp_in: torch.Tensor) -> torch.Tensor | None:
        """What the features decode into layer `layer`'s mlp.hook_out [seq, d], or None where nothing does."""
        if layer not in self.coders:
            return None
        return self.coders[layer].decode(features[layer], mlp_in)

    def n_latents(self, layer: int) -> int:
        return self.coders[layer].config.n_latents

    def writes(self, layer: int, feature: int) -> dict[int, torch.Tensor]:
        """Where a feature writes: {layer: its decoder row}."""
        return {layer: self.coders[layer].W_dec[feature]}

    # Sparse forms, for attribution: only the active features' encoder columns and decoder rows are touched, so a
    # backward pass costs (active features x d), not (positions x latents x d), per layer and target.

    def active_pre_activations(self, layer: int, mlp_in: torch.Tensor, active: Active) -> torch.Tensor:
        """[n]: the pre-activations of the active (position, feature) pairs."""
        coder = self.coders[layer]
        columns = coder.W_enc[:, active.features].detach()
        return active.read(coder.encoder_input(mlp_in), columns) + coder.b_enc[active.features].detach()

    def decode_active(self, layer: int, active: dict[int, Active], mlp_in: torch.Tensor) -> torch.Tensor | None:
        """decode_into from the active features' values alone."""
        if layer not in self.coders:
            return None
        coder, mine = self.coders[layer], active[layer]
        out = mine.scatter(coder.W_dec[mine.features].detach()) + coder.b_dec.detach()
        return out + mlp_in @ coder.W_skip if coder.config.skip_connection else out


@dataclass
class Active:
    """A layer's active features as attribution's leaves: positions [n], features [n] and values [n].

    Positions are read through a one-hot matrix [n, seq] rather than by indexing: the batched backward passes
    (vmap) have no fast batching rule for indexing's backward (an index_put) and would loop over the batch."""

    positions: torch.Tensor
    features: torch.Tensor
    values: torch.Tensor
    n_positions: int

    @cached_property
    def selector(self) -> torch.Tensor:
        """[n, seq]: one-hot rows of the features' positions (a CLT reads it once per later layer)."""
        return torch.nn.functional.one_hot(self.positions, self.n_positions).float()

    def read(self, per_position: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
        """[n]: each active feature's position's row of per_position [seq, d] dotted with its column of columns
        [d, n] (its encoder direction). Written as one [seq, n] product, whose backward is a matmul too."""
        return (self.selector * (per_position @ columns).T).sum(-1)

    def scatter(self, rows: torch.Tensor) -> torch.Tensor:
        """[seq, d]: the sum of value x row [n, d] at each active feature's position. A one-hot product: index_add
        is 2x slower here, its backward under vmap being no faster than indexing's."""
        return (self.selector.T * self.values) @ rows


@dataclass
class CLTReplacement:
    """A cross-layer transcoder: layer l's features read mlp.hook_in of l and write every covered layer's
    mlp.hook_out from l on (dictionaries/clt.py), as circuit-tracer's CLT replacement does."""

    clt: CrossLayerTranscoder

    @property
    def layers(self) -> list[int]:
        return self.clt.layers

    def encode(self, layer: int, mlp_in: torch.Tensor) -> torch.Tensor:
        return self.clt.layer_encode(layer, mlp_in)

    def pre_activations(self, layer: int, mlp_in: torch.Tensor) -> torch.Tensor:
        return self.clt.layer_pre_activations(layer, mlp_in)

    def decode_into(self, layer: int, features: dict[int, torch.Tensor], mlp_in: torch.Tensor) -> torch.Tensor | None:
        return self.clt.decode_into(layer, features) if layer in self.clt.layers else None

    def n_latents(self, layer: int) -> int:
        return self.clt.latents_per_layer

    def writes(self, layer: int, feature: int) -> dict[int, torch.Tensor]:
        return self.clt.writes(layer, feature)

    def active_pre_activations(self, layer: int, mlp_in: torch.Tensor, active: Active) -> torch.Tensor:
        i = self.clt.layer_index(layer)
        columns = self.clt.W_enc[i][:, active.features].detach()
        return active.read(mlp_in, columns) + self.clt.b_enc[i][active.features].detach()

    def decode_active(self, layer: int, active: dict[int, Active], mlp_in: torch.Tensor) -> torch.Tensor | None:
        if layer not in self.clt.layers:
            return None
        t, d = self.clt.layer_index(layer), self.clt.d_model
        sources = [(self.clt.layer_index(source), mine) for source, mine in active.items()]
        sources = [(s, mine) for s, mine in sources if s <= t]
        bias = self.clt.b_dec[t * d : (t + 1) * d].detach()
        if not sources:
            return bias.expand(mlp_in.shape[0], d)
        # Every earlier layer's features in one product (one matmul in each backward pass, not one per layer).
        weights = torch.cat([mine.selector.T * mine.values for _, mine in sources], 1)  # [seq, active up to t]
        rows = torch.cat([self.clt.W_dec[s][mine.features, t - s].detach() for s, mine in sources])
        return weights @ rows + bias


Replacement = TranscoderSet | CLTReplacement


@dataclass
class Frozen:
    """Attention patterns and every norm's per-position factor, measured on the prompt's true pass (`measure`) and
    then held fixed, which makes the forward pass affine in its sources."""

    patterns: list[torch.Tensor]  # [heads, seq, seq] per layer
    scales: dict[tuple[int, str], torch.Tensor] = field(default_factory=dict)  # (layer, norm name) -> [seq, 1]
    measure: bool = True

    def norm(self, layer: int, name: str, module: Any, x: torch.Tensor) -> torch.Tensor:
        if self.measure:
            self.scales[(layer, name)] = families.norm_scale(module, x)
        return families.frozen_norm(module, x, self.scales[(layer, name)])


@dataclass
class Shape:
    family: families.Family
    n_layers: int
    n_heads: int
    d_head: int
    groups: int  # query heads per key-value head


def shape_of(hf_model: Any) -> Shape:
    family = families.family_of(hf_model)
    n_heads, d_head = families.attention_heads(hf_model)
    groups = n_heads // getattr(hf_model.config, "num_key_value_heads", n_heads)
    return Shape(family, len(families.decoder_layers(hf_model)), n_heads, d_head, groups)


def attention_pass(hf_model: Any, ids: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """([heads, seq, seq] per layer, block 0's input [seq, d], the logits [seq, vocab]) from the model's forward.

    Eager attention, because SDPA does not return patterns. Block 0's input is the embedding as each family makes it
    (scaled by sqrt(d) in Gemma, plus learned positions in GPT-2)."""
    previous = hf_model.config._attn_implementation
    hf_model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            output = hf_model(ids, output_attentions=True, output_hidden_states=True)
    finally:
        hf_model.set_attn_implementation(previous)
    return [a[0].float() for a in output.attentions], output.hidden_states[0][0].float(), output.logits[0].float()


def attention(attention_module: Any, shape: Shape, h: torch.Tensor, pattern: torch.Tensor) -> torch.Tensor:
    """Attention output with a given pattern: linear in h, head by head (kv heads shared by `groups` query heads).
    The heads' mixed values are projected in one matmul, whose batched backward is one matmul too."""
    W_V, b_V = families.value_weights(attention_module, shape.family.qkv_layout, shape.n_heads, shape.d_head)
    v = h @ W_V.T
    if b_V is not None:
        v = v + b_V
    v = v.reshape(h.shape[0], -1, shape.d_head).repeat_interleave(shape.groups, dim=1)
    mixed = torch.einsum("hqk,khd->qhd", pattern, v)  # [seq, heads, d_head]
    W_O, b_O = families.output_weights(attention_module, shape.family)  # [d, heads * d_head]
    out = mixed.reshape(h.shape[0], -1) @ W_O.T
    return out if b_O is None else out + b_O


MlpOut = Callable[[int, Any, torch.Tensor], torch.Tensor]


def frozen_forward(hf_model: Any, shape: Shape, x: torch.Tensor, frozen: Frozen, mlp_out: MlpOut) -> list[torch.Tensor]:
    """The blocks with frozen patterns and norms from block 0's input x [seq, d]: the residual stream after each
    block (blocks.L.hook_out), [seq, d] each.

    `mlp_out(layer, block, mlp_in)` gives what the MLP adds to the residual (mlp.hook_out): the true MLP, or
    decoded features plus errors. Gemma's post-attention norm is frozen here; its post-MLP norm is inside mlp.hook_out.
    """
    family = shape.family
    residuals = []
    for layer, block in enumerate(families.decoder_layers(hf_model)):
        h = frozen.norm(layer, "attn", families.part(block, family.attn_norm), x)
        written = attention(families.part(block, family.attention), shape, h, frozen.patterns[layer])
        if family.post_attn_norm:
            written = frozen.norm(layer, "post_attn", families.part(block, family.post_attn_norm), written)
        mid = x if family.parallel(hf_model) else x + written
        mlp_in = frozen.norm(layer, "mlp", families.part(block, family.mlp_norm), mid)
        x = x + written + mlp_out(layer, block, mlp_in)
        residuals.append(x)
    return residuals


def final_normed(hf_model: Any, shape: Shape, frozen: Frozen, residual: torch.Tensor) -> torch.Tensor:
    """The last position's residual stream after the (frozen) final norm: what the unembedding reads [d]."""
    return frozen.norm(-1, "final", families.part(hf_model, shape.family.final_norm), residual[-1:])[0]


def true_mlp_out(hf_model: Any, shape: Shape, block: Any, mlp_in: torch.Tensor) -> torch.Tensor:
    """The MLP's real write to the residual stream (mlp.hook_out), Gemma's post-MLP norm included."""
    out = block.mlp(mlp_in).float()
    if shape.family.post_mlp_norm:
        out = families.part(block, shape.family.post_mlp_norm)(out).float()
    return out


def replaced_forward(
    hf_model: Any, shape: Shape, replacement: Replacement, leaves: dict, frozen: Frozen
) -> tuple[dict[int, torch.Tensor], list[torch.Tensor]]:
    """The local replacement model, affine in the leaves (embeddings [seq, d], each layer's Active features, each
    layer's errors [seq, d]): (each layer's active features' pre-activations [n], the residual after each block)."""
    pre_activations = {}

    def replaced_mlp(layer: int, block: Any, mlp_in: torch.Tensor) -> torch.Tensor:
        if layer in leaves["features"]:
            pre_activations[layer] = replacement.active_pre_activations(layer, mlp_in, leaves["features"][layer])
        decoded = replacement.decode_active(layer, leaves["features"], mlp_in)
        return leaves["errors"][layer] if decoded is None else decoded + leaves["errors"][layer]

    residuals = frozen_forward(hf_model, shape, leaves["embeddings"], frozen, replaced_mlp)
    return pre_activations, residuals
