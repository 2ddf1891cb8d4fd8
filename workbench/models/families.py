"""Model families: where each architecture keeps the parts that the hooks and the analyses read.

The backends, codebooks, attribution graphs and de-embeddings all need the same facts about a
model: its blocks, the norms around attention and the MLP, whether attention and MLP run in
parallel, and how its attention computes values and projects them out. This module is the one
place that knows them. A family is recognised by the modules a block has, not by a list of model
names, so relatives with the same layout (Mistral, Qwen 2, Gemma 2) work too; a layout that matches
none gets an error that names what is missing.

The hook mapping (docs/ARCHITECTURE.md has it as a table):
  hook_in        the block's input (the residual stream)
  attn.hook_z    the input of the attention's output projection: each head's output, side by side
  attn.hook_out  what attention adds to the residual stream: after Gemma's post-attention norm
  mlp.hook_in    the MLP's input, after its pre-norm
  mlp.hook_out   what the MLP adds to the residual stream: after Gemma's post-feedforward norm
  hook_out       the block's output
so that hook_in + attn.hook_out + mlp.hook_out = hook_out in every family (TransformerLens's legacy
HookedTransformer defines hook_attn_out and hook_mlp_out the same way for Gemma).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from workbench.errors import ModelLoadError

# Hugging Face models and modules are typed Any here: their submodules are per-architecture attributes that
# torch's stubs type as `Tensor | Module`.


@dataclass(frozen=True)
class Family:
    """Where a family keeps each part, as attribute names on the HF model and its blocks."""

    name: str
    examples: str  # the HF classes it was tested with
    layers: str  # the ModuleList of blocks, from the HF model
    final_norm: str  # from the HF model
    attention: str  # on a block
    qkv_layout: (
        str  # "separate" (q/k/v/o_proj), "gpt2" (Conv1D c_attn, c_proj), "neox" (per-head fused query_key_value)
    )
    out_proj: str  # on the attention module: its input is attn.hook_z
    attn_norm: str  # on a block: the norm whose output attention reads
    mlp_norm: str  # on a block: the norm whose output the MLP reads (mlp.hook_in)
    post_attn_norm: str | None = None  # on a block: Gemma's norm of the attention output, inside attn.hook_out
    post_mlp_norm: str | None = None  # on a block: Gemma's norm of the MLP output, inside mlp.hook_out
    parallel_flag: str | None = None  # config attribute: attention and MLP both read the block's input (NeoX)
    notes: str = ""

    def parallel(self, hf_model: Any) -> bool:
        return bool(self.parallel_flag and getattr(hf_model.config, self.parallel_flag, False))

    @property
    def post_norms(self) -> tuple[str, ...]:
        return tuple(n for n in (self.post_attn_norm, self.post_mlp_norm) if n)

    def sublayer_output(self, block: Any, kind: str) -> Any:
        """The module whose output is attn.hook_out or mlp.hook_out: the post-norm where the family has one."""
        if kind == "attn.hook_out":
            return _get(block, self.post_attn_norm or self.attention)
        if kind == "mlp.hook_out":
            return _get(block, self.post_mlp_norm or "mlp")
        raise ValueError(f"{kind} is not a sublayer output")


FAMILIES: tuple[Family, ...] = (
    Family(
        name="gemma",
        examples="Gemma3ForCausalLM (Gemma 2 has the same layout)",
        layers="model.layers",
        final_norm="model.norm",
        attention="self_attn",
        qkv_layout="separate",
        out_proj="o_proj",
        attn_norm="input_layernorm",
        mlp_norm="pre_feedforward_layernorm",
        post_attn_norm="post_attention_layernorm",
        post_mlp_norm="post_feedforward_layernorm",
        notes="RMSNorm scales by (1 + weight); embeddings scaled by sqrt(d_model) inside embed_tokens; "
        "GeGLU MLP; sliding-window and global layers; query-key norms",
    ),
    Family(
        name="llama",
        examples="LlamaForCausalLM, Qwen3ForCausalLM (also Mistral, Qwen 2)",
        layers="model.layers",
        final_norm="model.norm",
        attention="self_attn",
        qkv_layout="separate",
        out_proj="o_proj",
        attn_norm="input_layernorm",
        mlp_norm="post_attention_layernorm",  # Llama's name for the pre-MLP norm
        notes="RMSNorm; rotary positions; grouped-query attention; Qwen 3 adds query-key norms",
    ),
    Family(
        name="gpt2",
        examples="GPT2LMHeadModel",
        layers="transformer.h",
        final_norm="transformer.ln_f",
        attention="attn",
        qkv_layout="gpt2",
        out_proj="c_proj",
        attn_norm="ln_1",
        mlp_norm="ln_2",
        notes="LayerNorm; learned positions (added before block 0); Conv1D weights stored [in, out]",
    ),
    Family(
        name="neox",
        examples="GPTNeoXForCausalLM (Pythia)",
        layers="gpt_neox.layers",
        final_norm="gpt_neox.final_layer_norm",
        attention="attention",
        qkv_layout="neox",
        out_proj="dense",
        attn_norm="input_layernorm",
        mlp_norm="post_attention_layernorm",
        parallel_flag="use_parallel_residual",
        notes="LayerNorm; attention and MLP in parallel from the block input; partial rotary; "
        "query_key_value fused per head",
    ),
)


def _get(root: Any, path: str) -> Any:
    for attr in path.split("."):
        root = getattr(root, attr, None)
        if root is None:
            return None
    return root


def _missing(hf_model: Any, family: Family) -> list[str]:
    """The parts of `family` that this model lacks (empty: it is one of the family)."""
    missing = [path for path in (family.layers, family.final_norm) if _get(hf_model, path) is None]
    layers = _get(hf_model, family.layers)
    if not missing and isinstance(layers, nn.ModuleList) and len(layers):
        block = layers[0]
        for name in (family.attention, family.attn_norm, family.mlp_norm, "mlp", *family.post_norms):
            if _get(block, name) is None:
                missing.append(f"block.{name}")
        attention = _get(block, family.attention)
        if attention is not None:
            projections = {"separate": ("v_proj", "o_proj"), "gpt2": ("c_attn", "c_proj")}
            for name in projections.get(family.qkv_layout, ("query_key_value", "dense")):
                if _get(attention, name) is None:
                    missing.append(f"block.{family.attention}.{name}")
    return missing


def family_of(hf_model: Any) -> Family:
    """The family whose parts this model has, or an error that names what each family would need."""
    for family in FAMILIES:
        if not _missing(hf_model, family):
            return family
    # The family this model comes closest to is the one it most likely was meant to be.
    near = min(FAMILIES, key=lambda f: len(_missing(hf_model, f)))
    raise ModelLoadError(
        f"{type(hf_model).__name__} is not a supported model family ({', '.join(f.name for f in FAMILIES)}). "
        f"It is closest to '{near.name}' ({near.examples}) but has no {', '.join(_missing(hf_model, near))}. "
        "Supporting it means adding a Family to workbench/models/families.py."
    )


def decoder_layers(hf_model: Any) -> nn.ModuleList:
    """The model's list of transformer blocks."""
    return _get(hf_model, family_of(hf_model).layers)


def part(module: Any, path: str | None) -> Any:
    """A submodule by dotted attribute path (None for a family that lacks it)."""
    return None if path is None else _get(module, path)


def attention_heads(hf_model: Any) -> tuple[int, int]:
    """(n_heads, d_head) of the model's attention: the layout of attn.hook_z's last dimension."""
    config = hf_model.config
    n_heads = int(getattr(config, "num_attention_heads", None) or config.n_head)
    d_head = int(getattr(config, "head_dim", None) or _hidden_size(config) // n_heads)
    return n_heads, d_head


def _hidden_size(config: Any) -> int:
    return int(getattr(config, "hidden_size", None) or config.n_embd)


def hook_width_from_config(config: dict, kind: str) -> int:
    """Values per token at a hook kind, from a config.json dict (no weights loaded): attn.hook_z is
    n_heads x d_head, which differs from d_model in Gemma 3 (4 x 256 = 1024 against 640) and Qwen 3."""
    config = config.get("text_config", config)
    d_model = int(config.get("hidden_size") or config["n_embd"])
    if kind != "attn.hook_z":
        return d_model
    n_heads = int(config.get("num_attention_heads") or config["n_head"])
    return int(config.get("head_dim") or d_model // n_heads) * n_heads


# -- the attention's linear path, for analyses that freeze its patterns -----------------------------------


def value_weights(attention: Any, layout: str, n_heads: int, d_head: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(W_V [n_kv_heads * d_head, d_model], b_V or None) in nn.Linear's orientation, head-major rows."""
    if layout == "separate":
        v = attention.v_proj
        return v.weight, v.bias
    if layout == "gpt2":  # Conv1D: weight [d_in, 3 * d], columns q | k | v
        d = n_heads * d_head
        return attention.c_attn.weight[:, 2 * d :].T, attention.c_attn.bias[2 * d :]
    # NeoX: rows grouped per head as [q | k | v] of d_head each
    weight = attention.query_key_value.weight.view(n_heads, 3, d_head, -1)[:, 2].reshape(n_heads * d_head, -1)
    bias = attention.query_key_value.bias
    return weight, None if bias is None else bias.view(n_heads, 3, d_head)[:, 2].reshape(-1)


def output_weights(attention: Any, family: Family) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(W_O [d_model, n_heads * d_head], b_O or None) in nn.Linear's orientation."""
    projection = getattr(attention, family.out_proj)
    weight = projection.weight.T if family.qkv_layout == "gpt2" else projection.weight  # Conv1D stores [in, out]
    return weight, projection.bias


# -- norms with their per-position factor frozen --------------------------------------------------------


def norm_scale(norm: Any, x: torch.Tensor) -> torch.Tensor:
    """The norm's per-position factor 1 / rms (or 1 / std for LayerNorm) at x: [..., 1]."""
    found = [getattr(norm, name) for name in ("variance_epsilon", "eps") if hasattr(norm, name)]
    eps = float(found[0]) if found else 1e-6
    x = x.detach().float()
    if isinstance(norm, nn.LayerNorm):
        x = x - x.mean(-1, keepdim=True)
    return torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def norm_gain(norm: Any) -> torch.Tensor:
    """The per-dimension gain: Gemma's RMSNorm multiplies by (1 + weight), the others by weight."""
    weight = norm.weight.float()
    return 1 + weight if type(norm).__name__.startswith("Gemma") else weight


def frozen_norm(norm: Any, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The norm with its factor fixed at `scale`: affine in x, equal to norm(x) where the scale was measured."""
    if isinstance(norm, nn.LayerNorm):
        out = (x - x.mean(-1, keepdim=True)) * scale * norm_gain(norm)
        bias: torch.Tensor | None = norm.bias
        return out if bias is None else out + bias
    return x * scale * norm_gain(norm)
