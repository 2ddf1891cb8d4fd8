"""Attribution: the exact edges of one prompt's local replacement model (replacement.py).

Frozen, the residual stream is affine in its sources, so each edge is exact:

    edge(source -> target) = source value x d(target) / d(source)

where a target is an attribution target (below) or an active feature's pre-activation. For a feature-to-feature
edge through the residual stream alone this is a_i * (W_dec[i] . v_j): the input-invariant virtual weight times the
input-dependent activation; the graph keeps both (`adjacency` and `per_unit` = adjacency / activation). Edges
through attention go through the frozen patterns, head by head. Every target's incoming edges plus its bias term
sum to its value, which the tests check to 1e-4. The gradients of many targets come from one batched backward
pass (`torch.autograd.grad(..., is_grads_batched=True)`), `batch_size` targets at a time.

Attribution targets (circuit-tracer's AttributionTargets, written for our replacement model):
  - salient logits (the default): the most probable next tokens, until their probabilities add up to
    `top_p` or there are `max_logits` of them, each weighted by its probability;
  - named tokens: those tokens' logits, weighted by probability;
  - a logit difference (`answer` against `wrong`): one custom target of weight 1;
  - a direction in the residual stream after block `direction_layer` (default the last), at the last position:
    one custom target of weight 1.
Logits are demeaned as circuit-tracer demeans them (the mean logit over the vocabulary is subtracted), so a
constant shift of every logit carries no attribution; a target's value is its demeaned logit.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from workbench.circuits.graph import AttributionGraph, Node
from workbench.circuits.replacement import (
    Active,
    Frozen,
    Replacement,
    attention_pass,
    final_normed,
    frozen_forward,
    replaced_forward,
    shape_of,
    true_mlp_out,
)
from workbench.circuits.tasks import TaskError
from workbench.corpus import bos_token_id
from workbench.models import families


@dataclass
class Targets:
    """What the graph explains (module docstring). Give at most one of tokens, answer/wrong and direction."""

    tokens: list[str] = field(default_factory=list)
    """Explain these tokens' logits (single tokens, e.g. ' Mary')."""
    answer: str | None = None
    """With `wrong`: explain logit(answer) - logit(wrong)."""
    wrong: str | None = None
    direction: np.ndarray | None = None
    """A vector [d_model] read off the residual stream at the last position."""
    direction_layer: int | None = None
    """The block after which the direction is read (default: the last)."""
    direction_label: str = "direction"
    top_p: float = 0.95
    """Salient logits: stop once the targets' probabilities add up to this."""
    max_logits: int = 10
    """Salient logits: at most this many."""

    def __post_init__(self) -> None:
        given = sum([bool(self.tokens), self.answer is not None or self.wrong is not None, self.direction is not None])
        if given > 1:
            raise TaskError("Give one kind of target: tokens, a logit difference (answer and wrong), or a direction.")
        if (self.answer is None) != (self.wrong is None):
            raise TaskError("A logit difference needs both the answer and the wrong token.")
        if not 0 < self.top_p <= 1 or self.max_logits < 1:
            raise TaskError("Salient logits need 0 < top_p <= 1 and max_logits >= 1.")


@dataclass
class _Target:
    label: str
    vocab_id: int  # a vocabulary index, or vocab size + i for the i-th custom target
    weight: float
    read: Any  # (residuals after each block, normed last position) -> scalar tensor


def single_token(tokenizer, text: str) -> int:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise TaskError(
            f"The target {text!r} is {len(ids)} tokens, not one; give a single-token target "
            "(often with a leading space, e.g. ' Mary')."
        )
    return ids[0]


def prompt_ids(tokenizer, prompt: str) -> torch.Tensor:
    """[1, seq]: BOS, then the prompt's tokens."""
    ids = torch.tensor([[bos_token_id(tokenizer), *tokenizer(prompt, add_special_tokens=False)["input_ids"]]])
    if ids.shape[1] < 2:
        raise TaskError("Give a prompt of at least one token.")
    return ids


def resolve_targets(hf_model: Any, tokenizer, spec: Targets, logits: torch.Tensor, n_layers: int) -> list[_Target]:
    unembed = hf_model.get_output_embeddings()
    W_U = unembed.weight.float()
    b_U = unembed.bias.float() if unembed.bias is not None else torch.zeros(W_U.shape[0])
    mean_row, mean_bias = W_U.mean(0), b_U.mean()
    probabilities = torch.softmax(logits[-1], -1)
    vocab = W_U.shape[0]

    def logit_reader(vector: torch.Tensor, bias: torch.Tensor):
        return lambda residuals, normed: normed @ vector + bias

    def logit_target(token_id: int) -> _Target:
        return _Target(
            tokenizer.decode([token_id]),
            token_id,
            float(probabilities[token_id]),
            logit_reader(W_U[token_id] - mean_row, b_U[token_id] - mean_bias),
        )

    if spec.answer is not None and spec.wrong is not None:
        a, b = single_token(tokenizer, spec.answer), single_token(tokenizer, spec.wrong)
        label = f"logit({tokenizer.decode([a])})-logit({tokenizer.decode([b])})"
        return [_Target(label, vocab, 1.0, logit_reader(W_U[a] - W_U[b], b_U[a] - b_U[b]))]
    if spec.direction is not None:
        vector = torch.as_tensor(np.asarray(spec.direction, dtype=np.float32)).reshape(-1)
        d_model = W_U.shape[1]
        if vector.shape[0] != d_model:
            raise TaskError(f"The direction has {vector.shape[0]} values; this model's residual stream has {d_model}.")
        layer = n_layers - 1 if spec.direction_layer is None else spec.direction_layer
        if not 0 <= layer < n_layers:
            raise TaskError(f"--direction-layer {layer} is not a block of this model (0 to {n_layers - 1}).")
        return [
            _Target(
                f"{spec.direction_label} after block {layer}",
                vocab,
                1.0,
                lambda residuals, normed: residuals[layer][-1] @ vector,
            )
        ]
    if spec.tokens:
        return [logit_target(single_token(tokenizer, text)) for text in spec.tokens]
    order = torch.argsort(probabilities, descending=True)[: spec.max_logits]
    cumulative = torch.cumsum(probabilities[order], 0)
    count = min(int(torch.searchsorted(cumulative, torch.tensor(spec.top_p)).item()) + 1, len(order))
    return [logit_target(int(token_id)) for token_id in order[:count]]


@torch.no_grad()
def first_target(hf_model: Any, tokenizer, spec: Targets, ids: torch.Tensor) -> _Target:
    """The first of the prompt's targets, as build_graph resolves them: what interventions and faithfulness read."""
    n_layers = len(families.decoder_layers(hf_model))
    return resolve_targets(hf_model, tokenizer, spec, hf_model(ids).logits[0].float(), n_layers)[0]


def _error_id(layer: int, position: int, taken: set[str]) -> str:
    node_id = f"0_{layer}_{position}"
    return node_id + "_error" if node_id in taken else node_id


def dense_bytes(n_nodes: int) -> int:
    """Memory for the graph's two dense [nodes, nodes] matrices (float64 edges, float32 per-unit weights)."""
    return 12 * n_nodes * n_nodes


def max_nodes(n_positions: int, n_layers: int, max_features: int, n_targets: int) -> int:
    """The most nodes a graph of this prompt can have: embeddings, up to max_features features, errors, targets."""
    return n_positions * (1 + n_layers) + max_features + n_targets


def available_memory() -> int:
    """Bytes the kernel says could still be allocated (MemAvailable), or the physical memory where that is unknown."""
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def build_graph(
    hf_model: Any,
    tokenizer,
    prompt: str,
    replacement: Replacement,
    targets: Targets | None = None,
    max_features: int = 4096,
    batch_size: int = 256,
) -> AttributionGraph:
    """The full (unpruned) attribution graph of `prompt` for the targets (default: the salient logits)."""
    targets = targets or Targets()
    shape = shape_of(hf_model)
    n_layers = shape.n_layers
    bad = [layer for layer in replacement.layers if not 0 <= layer < n_layers]
    if bad:
        raise TaskError(f"Transcoders for layers {bad} do not fit a model with layers 0 to {n_layers - 1}.")
    ids = prompt_ids(tokenizer, prompt)
    T = ids.shape[1]
    tokens = ["<bos>"] + [tokenizer.decode([i]) for i in ids[0, 1:].tolist()]
    patterns, block_input, model_logits = attention_pass(hf_model, ids)
    resolved = resolve_targets(hf_model, tokenizer, targets, model_logits, n_layers)

    # -- the true pass: frozen norm scales and the sources' true values -----------------------------
    frozen = Frozen(patterns)
    features: dict[int, torch.Tensor] = {}
    errors: dict[int, torch.Tensor] = {}

    def true_mlp(layer: int, block: Any, mlp_in: torch.Tensor) -> torch.Tensor:
        true_out = true_mlp_out(hf_model, shape, block, mlp_in)
        if layer in replacement.layers:
            acts = replacement.encode(layer, mlp_in)
            acts[0] = 0  # dictionaries are not trained on the BOS position: its MLP output stays an error node
            features[layer] = acts
        decoded = replacement.decode_into(layer, features, mlp_in)
        errors[layer] = true_out if decoded is None else true_out - decoded
        return true_out

    with torch.no_grad():
        final_normed(hf_model, shape, frozen, frozen_forward(hf_model, shape, block_input, frozen, true_mlp)[-1])
    frozen.measure = False
    active = [(layer, int(p), int(f)) for layer in sorted(features) for p, f in torch.nonzero(features[layer] > 0)]
    if len(active) > max_features:
        raise TaskError(
            f"This prompt activates {len(active)} transcoder features, over the limit of {max_features}. "
            "Shorten the prompt, use fewer transcoders, or raise --max-features (memory and time grow "
            "with its square)."
        )
    # The leaves are the active features' values only ([active] per layer), scattered into each layer's dense
    # [seq, latents] for the forward pass: a backward pass then fills gradients of the active features, not of
    # every latent at every position (30 layers x 4,608 latents x 16 positions per target, otherwise).
    by_layer = {layer: [(i, p, f) for i, (fl, p, f) in enumerate(active) if fl == layer] for layer in features}
    at = {
        layer: (
            torch.tensor([p for _, p, _ in rows], dtype=torch.long),
            torch.tensor([f for _, _, f in rows], dtype=torch.long),
        )
        for layer, rows in by_layer.items()
    }
    active_values = {layer: features[layer][at[layer]].clone().requires_grad_(True) for layer in features}
    leaves: dict[str, Any] = {
        "embeddings": block_input.clone().requires_grad_(True),
        "features": {layer: Active(*at[layer], active_values[layer], T) for layer in features},
        "errors": {layer: e.clone().requires_grad_(True) for layer, e in errors.items()},
    }
    pre_activations, residuals = replaced_forward(hf_model, shape, replacement, leaves, frozen)
    normed = final_normed(hf_model, shape, frozen, residuals[-1])
    target_values = torch.stack([target.read(residuals, normed) for target in resolved])

    # -- nodes: embeddings, features, errors, targets --------------------------------------------------
    nodes = [
        Node(f"E_{ids[0, p].item()}_{p}", "embedding", -1, p, activation=float(block_input[p].norm()),
             token=tokens[p], vocab_id=int(ids[0, p]))
        for p in range(T)
    ]  # fmt: skip
    nodes += [
        Node(f"{layer}_{f}_{p}", "feature", layer, p, f, float(features[layer][p, f]), tokens[p])
        for layer, p, f in active
    ]
    # circuit-tracer's error ids (0_{layer}_{pos}) can equal a layer-0 feature's ({layer}_{feature}_{pos}); such
    # an error node gets a suffix, so that every id names one node.
    feature_ids = {node.node_id for node in nodes}
    nodes += [
        Node(_error_id(layer, p, feature_ids), "error", layer, p, activation=float(errors[layer][p].norm()),
             token=tokens[p])
        for layer in range(n_layers)
        for p in range(T)
    ]  # fmt: skip
    nodes += [
        Node(f"{n_layers + 1}_{t.vocab_id}_{T - 1}", "logit", n_layers, T - 1, activation=float(value),
             token=t.label, vocab_id=t.vocab_id, weight=t.weight)
        for t, value in zip(resolved, target_values.detach())
    ]  # fmt: skip

    # -- edges: batched backward passes, one row per target ----------------------------------------------
    n, F = len(nodes), len(active)
    first_error = T + F
    adjacency = np.zeros((n, n))
    per_unit = np.zeros((n, n), dtype=np.float32)
    columns = {layer: np.array([T + i for i, _, _ in rows], dtype=int) for layer, rows in by_layer.items()}
    # One group of rows per layer's features, then the targets. A group's backward passes reach only the layers
    # below it (autograd walks back from that group's outputs alone), which halves the work on average.
    feature_layers = sorted(features)
    leaf_list = [leaves["embeddings"]] + [active_values[l] for l in feature_layers]
    leaf_list += [leaves["errors"][l] for l in range(n_layers)]
    groups = [(columns[layer], pre_activations[layer]) for layer in feature_layers]
    groups.append((np.arange(n - len(resolved), n), target_values))
    for group_rows, outputs in groups:
        for start in range(0, len(group_rows), batch_size):
            chunk = group_rows[start : start + batch_size]
            seeds = torch.zeros(len(chunk), len(outputs))
            seeds[torch.arange(len(chunk)), torch.arange(start, start + len(chunk))] = 1.0
            raw = torch.autograd.grad(
                outputs, leaf_list, grad_outputs=seeds, retain_graph=True, allow_unused=True, is_grads_batched=True
            )
            grads = [torch.zeros(len(chunk), *leaf.shape) if g is None else g for g, leaf in zip(raw, leaf_list)]
            with torch.no_grad():
                adjacency[chunk, :T] = (grads[0] * leaves["embeddings"]).sum(-1).numpy()
                for k, layer in enumerate(feature_layers):
                    gradient = grads[1 + k]  # [chunk, active features of the layer]
                    per_unit[np.ix_(chunk, columns[layer])] = gradient.numpy()
                    adjacency[np.ix_(chunk, columns[layer])] = (gradient * active_values[layer]).numpy()
                for layer in range(n_layers):
                    contribution = (grads[1 + len(feature_layers) + layer] * leaves["errors"][layer]).sum(-1)
                    adjacency[chunk, first_error + layer * T : first_error + (layer + 1) * T] = contribution.numpy()

    # -- each target's bias: its value with every source at zero ------------------------------------------
    with torch.no_grad():
        zero = {
            "embeddings": torch.zeros_like(block_input),
            "features": {layer: Active(*at[layer], torch.zeros(len(at[layer][0])), T) for layer in features},
            "errors": {layer: torch.zeros_like(e) for layer, e in errors.items()},
        }
        zero_pre, zero_residuals = replaced_forward(hf_model, shape, replacement, zero, frozen)
        zero_normed = final_normed(hf_model, shape, frozen, zero_residuals[-1])
        bias = np.zeros(n)
        for layer, rows in by_layer.items():
            for j, (i, _, _) in enumerate(rows):
                bias[T + i] = float(zero_pre[layer][j])
        for i, target in enumerate(resolved):
            bias[n - len(resolved) + i] = float(target.read(zero_residuals, zero_normed))
    return AttributionGraph(prompt, tokens, nodes, adjacency, per_unit, bias, n_layers)
