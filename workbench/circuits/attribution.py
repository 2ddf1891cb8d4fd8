"""Attribution graphs through transcoders (Dunefsky et al.; Anthropic's circuit-tracer).

The local replacement model of one prompt: the model's own forward pass, with
  - each MLP that has a transcoder replaced by the transcoder's decoded features, plus an
    error node (the MLP's true output minus the reconstruction), so nothing is lost;
  - each MLP without a transcoder kept whole as an error node;
  - attention patterns and every norm's per-position factor frozen at their values on this prompt.
Frozen, the residual stream is a linear function of the sources: token embeddings, feature
activations, error nodes (plus constant biases). So each edge is exact:

    edge(source -> target) = source value x d(target) / d(source)

where a target is the logit of the answer token or an active feature's pre-activation. For a
feature-to-feature edge through the residual stream alone this is a_i * (W_dec[i] . v_j): the
input-invariant virtual weight times the input-dependent activation; the graph keeps both
(`weight` and `per_unit` = weight / activation). Edges through attention go through the
frozen patterns, head by head. Every target's incoming edges plus its bias term sum to its
value, which the tests check to 1e-4.

Pruning follows circuit-tracer: rows are normalised to sum |weight| = 1, influence flows back
from the logit through (I - A)^-1, features are kept until `node_threshold` of the logit's
influence on features is covered, and edges until `edge_threshold` of the edge influence is.
Scores, on the unpruned graph:
  replacement   share of the logit's influence that reaches embeddings rather than errors;
  completeness  influence-weighted share of every node's direct input that is not an error.
Every family in workbench/models/families.py is supported (Llama/Qwen, Gemma, GPT-2, NeoX): LayerNorm and
RMSNorm factors are frozen alike (LayerNorm's centring is linear), Gemma's post-attention norm is frozen on
the attention path and its post-MLP norm sits inside mlp.hook_out, which transcoders replace, and NeoX's
MLP reads the block input. Gemma 2's final logit soft-capping is not applied: the target is the logit before it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from workbench.circuits.tasks import TaskError
from workbench.corpus import bos_token_id
from workbench.devices import require_cpu, resolve_placement
from workbench.dictionaries.base import SparseCoder
from workbench.models import families, load_hf_model, resolve_model_dir
from workbench.provenance import git_commit, package_version
from workbench.store import Store, check_run_name, lookups, make_run_name
from workbench.store.analyses import replace_graph
from workbench.store.records import GraphRecord

# The Hugging Face models here are typed `Any`: their config fields and submodules (model.layers, self_attn.v_proj,
# ...) are per-architecture attributes that torch's stubs type as `Tensor | Module`.


@dataclass
class Node:
    node_id: str
    kind: str  # embedding | feature | error | logit
    layer: int  # -1 for embeddings; n_layers for the logit
    position: int
    feature: int | None = None
    activation: float = 0.0  # feature activation, logit value, or source norm for embeddings and errors
    token: str = ""
    influence: float = 0.0


@dataclass
class AttributionGraph:
    prompt: str
    tokens: list[str]
    target_token: str
    target_logit: float
    nodes: list[Node]
    adjacency: np.ndarray  # [targets = nodes, sources = nodes]: edge weights, row = target
    per_unit: np.ndarray  # the same edges divided by the source's activation (features), else 0
    bias: np.ndarray  # [nodes]: the constant part of each target's value (biases)
    replacement_score: float = 0.0
    completeness_score: float = 0.0
    kept: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))  # node mask after pruning
    kept_edges: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), bool))
    transcoders: dict[int, str] = field(default_factory=dict)


def _attention_pass(hf_model: Any, ids: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """([heads, seq, seq] per layer, the residual stream entering block 0 [seq, d]) from the model's own forward.

    Eager attention, because SDPA does not return patterns. Block 0's input is the embedding as each family makes it
    (scaled by sqrt(d) in Gemma, plus learned positions in GPT-2)."""
    previous = hf_model.config._attn_implementation
    hf_model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            output = hf_model(ids, output_attentions=True, output_hidden_states=True)
    finally:
        hf_model.set_attn_implementation(previous)
    return [a[0].float() for a in output.attentions], output.hidden_states[0][0].float()


@dataclass
class _Frozen:
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
class _Shape:
    family: families.Family
    n_heads: int
    d_head: int
    groups: int  # query heads per key-value head


def _shape(hf_model: Any) -> _Shape:
    family = families.family_of(hf_model)
    n_heads, d_head = families.attention_heads(hf_model)
    return _Shape(family, n_heads, d_head, n_heads // getattr(hf_model.config, "num_key_value_heads", n_heads))


def _attention(attention: Any, shape: _Shape, h: torch.Tensor, pattern: torch.Tensor) -> torch.Tensor:
    """Attention output with a given pattern: linear in h, head by head (kv heads shared by `groups` query heads)."""
    T = h.shape[0]
    W_V, b_V = families.value_weights(attention, shape.family.qkv_layout, shape.n_heads, shape.d_head)
    v = h @ W_V.T
    if b_V is not None:
        v = v + b_V
    v = v.reshape(T, -1, shape.d_head).repeat_interleave(shape.groups, dim=1)
    W_O, b_O = families.output_weights(attention, shape.family)
    out = torch.einsum("hqk,khd->qhd", pattern, v).reshape(T, shape.n_heads * shape.d_head) @ W_O.T
    return out if b_O is None else out + b_O


def _forward(
    hf_model: Any, shape: _Shape, x: torch.Tensor, frozen: _Frozen, mlp_out: Callable[[int, Any, torch.Tensor], Any]
) -> torch.Tensor:
    """The blocks with frozen patterns and norms, from block 0's input x [seq, d] to the logits at the last position.

    `mlp_out(layer, block, mlp_in)` gives what the MLP adds to the residual (mlp.hook_out): the true MLP, or
    decoded features plus errors. Gemma's post-attention norm is frozen here; its post-MLP norm is inside mlp.hook_out.
    """
    family = shape.family
    for layer, block in enumerate(families.decoder_layers(hf_model)):
        h = frozen.norm(layer, "attn", families.part(block, family.attn_norm), x)
        attention = _attention(families.part(block, family.attention), shape, h, frozen.patterns[layer])
        if family.post_attn_norm:
            attention = frozen.norm(layer, "post_attn", families.part(block, family.post_attn_norm), attention)
        mid = x if family.parallel(hf_model) else x + attention
        mlp_in = frozen.norm(layer, "mlp", families.part(block, family.mlp_norm), mid)
        x = x + attention + mlp_out(layer, block, mlp_in)
    final = frozen.norm(-1, "final", families.part(hf_model, family.final_norm), x[-1:])[0]
    unembed = hf_model.get_output_embeddings()
    logits = final @ unembed.weight.float().T
    return logits if unembed.bias is None else logits + unembed.bias


def _replacement_forward(
    hf_model: Any, shape: _Shape, transcoders: dict[int, SparseCoder], leaves: dict, frozen: _Frozen
) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
    """The local replacement model: affine in the leaves (embeddings, feature activations, errors)."""
    pre_activations = {}

    def replaced_mlp(layer: int, block: Any, mlp_in: torch.Tensor) -> torch.Tensor:
        if layer not in transcoders:
            return leaves["errors"][layer]
        coder = transcoders[layer]
        pre_activations[layer] = coder.pre_activations(mlp_in)
        out = leaves["features"][layer] @ coder.W_dec + coder.b_dec + leaves["errors"][layer]
        return out + mlp_in @ coder.W_skip if coder.config.skip_connection else out

    logits = _forward(hf_model, shape, leaves["embeddings"], frozen, replaced_mlp)
    return pre_activations, logits


def build_graph(
    hf_model: Any,
    tokenizer,
    prompt: str,
    transcoders: dict[int, SparseCoder],
    target: str | None = None,
    max_features: int = 4096,
) -> AttributionGraph:
    """The full (unpruned) attribution graph of `prompt` for the logit of `target` (default: the top prediction)."""
    shape = _shape(hf_model)
    n_layers = len(families.decoder_layers(hf_model))
    bad = [layer for layer in transcoders if not 0 <= layer < n_layers]
    if bad:
        raise TaskError(f"Transcoders for layers {bad} do not fit a model with layers 0 to {n_layers - 1}.")
    bos = bos_token_id(tokenizer)
    ids = torch.tensor([[bos, *tokenizer(prompt, add_special_tokens=False)["input_ids"]]])
    if ids.shape[1] < 2:
        raise TaskError("Give a prompt of at least one token.")
    tokens = ["<bos>"] + [tokenizer.decode([i]) for i in ids[0, 1:].tolist()]
    patterns, block_input = _attention_pass(hf_model, ids)
    T = ids.shape[1]

    # -- the true pass: frozen norm scales and the sources' true values -----------------------------
    frozen = _Frozen(patterns)
    sources: dict[str, Any] = {"embeddings": block_input, "features": {}, "errors": {}}

    def true_mlp(layer: int, block: Any, mlp_in: torch.Tensor) -> torch.Tensor:
        true_out = block.mlp(mlp_in).float()
        if shape.family.post_mlp_norm:
            true_out = families.part(block, shape.family.post_mlp_norm)(true_out).float()
        if layer in transcoders:
            acts = transcoders[layer].encode(mlp_in)
            acts[0] = 0  # dictionaries are not trained on the BOS position: its MLP output stays an error node
            sources["features"][layer] = acts
            sources["errors"][layer] = true_out - transcoders[layer].decode(acts, mlp_in)
        else:
            sources["errors"][layer] = true_out
        return true_out

    with torch.no_grad():
        _forward(hf_model, shape, block_input, frozen, true_mlp)
    frozen.measure = False
    leaves = {
        "embeddings": sources["embeddings"].clone().requires_grad_(True),
        "features": {l: a.clone().requires_grad_(True) for l, a in sources["features"].items()},
        "errors": {l: e.clone().requires_grad_(True) for l, e in sources["errors"].items()},
    }
    pre_activations, logits = _replacement_forward(hf_model, shape, transcoders, leaves, frozen)
    embeddings, feature_leaves, error_leaves = leaves["embeddings"], leaves["features"], leaves["errors"]
    target_id = int(logits.argmax()) if target is None else _single_token(tokenizer, target)

    # -- nodes -------------------------------------------------------------------------------------
    nodes = [
        Node(
            f"E_{ids[0, p].item()}_{p}",
            "embedding",
            -1,
            p,
            activation=float(embeddings[p].detach().norm()),
            token=tokens[p],
        )
        for p in range(T)
    ]
    feature_index: list[tuple[int, int, int]] = []
    for layer in sorted(feature_leaves):
        for p, f in zip(*torch.nonzero(feature_leaves[layer].detach() > 0, as_tuple=True)):
            feature_index.append((layer, int(p), int(f)))
            nodes.append(
                Node(
                    f"{layer}_{int(f)}_{int(p)}",
                    "feature",
                    layer,
                    int(p),
                    int(f),
                    float(feature_leaves[layer][p, f].detach()),
                    tokens[int(p)],
                )
            )
    if len(feature_index) > max_features:
        raise TaskError(
            f"This prompt activates {len(feature_index)} transcoder features, over the limit of {max_features}. "
            "Shorten the prompt, use fewer transcoders, or raise --max-features (memory and time grow "
            "with its square)."
        )
    for layer in sorted(error_leaves):
        for p in range(T):
            nodes.append(
                Node(
                    f"{layer}_error_{p}",
                    "error",
                    layer,
                    p,
                    activation=float(error_leaves[layer][p].detach().norm()),
                    token=tokens[p],
                )
            )
    nodes.append(
        Node(
            f"logit_{target_id}",
            "logit",
            n_layers,
            T - 1,
            activation=float(logits[target_id].detach()),
            token=tokenizer.decode([target_id]),
        )
    )

    # -- edges: one backward pass per target; the bias is each target's value with every source at 0 ---
    n = len(nodes)
    adjacency, per_unit = np.zeros((n, n)), np.zeros((n, n))
    layers_with_features = sorted(feature_leaves)
    error_layers = sorted(error_leaves)
    leaf_list = (
        [embeddings] + [feature_leaves[l] for l in layers_with_features] + [error_leaves[l] for l in error_layers]
    )
    positions = {
        l: torch.tensor([p for (fl, p, _) in feature_index if fl == l], dtype=torch.long) for l in layers_with_features
    }
    features_of = {
        l: torch.tensor([f for (fl, _, f) in feature_index if fl == l], dtype=torch.long) for l in layers_with_features
    }
    first_error = T + len(feature_index)
    targets = [(T + i, pre_activations[l][p, f]) for i, (l, p, f) in enumerate(feature_index)]
    targets.append((n - 1, logits[target_id]))
    for row, value in targets:
        raw_grads = torch.autograd.grad(value, leaf_list, retain_graph=True, allow_unused=True)
        grads = [torch.zeros_like(leaf) if g is None else g for g, leaf in zip(raw_grads, leaf_list)]
        with torch.no_grad():
            adjacency[row, :T] = (grads[0] * embeddings).sum(-1).numpy()
            column = T
            for k, layer in enumerate(layers_with_features):
                at = (positions[layer], features_of[layer])
                count = len(positions[layer])
                per_unit[row, column : column + count] = grads[1 + k][at].numpy()
                adjacency[row, column : column + count] = (grads[1 + k][at] * feature_leaves[layer][at]).numpy()
                column += count
            for k, layer in enumerate(error_layers):
                contribution = (grads[1 + len(layers_with_features) + k] * error_leaves[layer]).sum(-1).numpy()
                adjacency[row, first_error + k * T : first_error + (k + 1) * T] = contribution
    with torch.no_grad():
        zero = {
            "embeddings": torch.zeros_like(embeddings),
            "features": {l: torch.zeros_like(a) for l, a in feature_leaves.items()},
            "errors": {l: torch.zeros_like(e) for l, e in error_leaves.items()},
        }
        zero_pre, zero_logits = _replacement_forward(hf_model, shape, transcoders, zero, frozen)
    bias = np.zeros(n)
    for i, (l, p, f) in enumerate(feature_index):
        bias[T + i] = float(zero_pre[l][p, f])
    bias[n - 1] = float(zero_logits[target_id])
    graph = AttributionGraph(
        prompt,
        tokens,
        tokenizer.decode([target_id]),
        float(logits[target_id].detach()),
        nodes,
        adjacency,
        per_unit,
        bias,
    )
    return graph


def _single_token(tokenizer, text: str) -> int:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise TaskError(
            f"The target {text!r} is {len(ids)} tokens, not one; give a single-token target "
            "(often with a leading space, e.g. ' Mary')."
        )
    return ids[0]


# -- influence, pruning and scores ---------------------------------------------------------------


def _normalised(adjacency: np.ndarray) -> np.ndarray:
    magnitude = np.abs(adjacency)
    totals = magnitude.sum(1, keepdims=True)
    return np.divide(magnitude, totals, out=np.zeros_like(magnitude), where=totals > 0)


def prune(graph: AttributionGraph, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> AttributionGraph:
    """Keep the features carrying `node_threshold` of the logit's influence, and the edges carrying `edge_threshold`."""
    n = len(graph.nodes)
    normalised = _normalised(graph.adjacency)
    start = np.zeros(n)
    start[-1] = 1.0
    # Influence of the logit on every node: start (I - A)^-1, i.e. the sum over paths of products of normalised weights.
    influence = np.linalg.solve((np.eye(n) - normalised).T, start)
    for node, value in zip(graph.nodes, influence):
        node.influence = float(value)
    kinds = np.array([node.kind for node in graph.nodes])
    kept = kinds != "feature"
    features = np.flatnonzero(kinds == "feature")
    if len(features):
        order = features[np.argsort(-influence[features])]
        cumulative = np.cumsum(influence[order]) / max(influence[order].sum(), 1e-12)
        kept[order[: int(np.searchsorted(cumulative, node_threshold)) + 1]] = True
    edge_scores = normalised * influence[:, None] * kept[:, None] * kept[None, :]
    flat = np.sort(edge_scores.ravel())[::-1]
    cumulative = np.cumsum(flat) / max(flat.sum(), 1e-12)
    cut = flat[min(int(np.searchsorted(cumulative, edge_threshold)), len(flat) - 1)] if flat.sum() > 0 else np.inf
    graph.kept = kept
    graph.kept_edges = (edge_scores >= cut) & (edge_scores > 0)
    sinks = np.isin(kinds, ("embedding", "error"))
    reached = influence * sinks
    graph.replacement_score = float(reached[kinds == "embedding"].sum() / max(reached.sum(), 1e-12))
    has_inputs = np.abs(graph.adjacency).sum(1) > 0
    error_share = normalised[:, kinds == "error"].sum(1)
    weights = influence * has_inputs
    graph.completeness_score = float(1 - (weights * error_share).sum() / max(weights.sum(), 1e-12))
    return graph


def greedy_paths(graph: AttributionGraph, n_paths: int = 5, beam: int = 50) -> list[tuple[float, list[int]]]:
    """The strongest paths from a source (embedding or error) to the logit, found greedily backwards.

    A path's strength is the product of its normalised |edge| shares; a beam of the best partial
    paths is extended one edge at a time, as in Dunefsky et al.'s greedy path search.
    Returns (strength, node indices from source to logit), strongest first.
    """
    normalised = _normalised(graph.adjacency)
    logit = len(graph.nodes) - 1
    partial = [(1.0, [logit])]
    finished: list[tuple[float, list[int]]] = []
    while partial:
        grown = []
        for strength, path in partial:
            row = normalised[path[0]]
            sources = np.flatnonzero(row)
            if not len(sources):  # an embedding or error node: a complete path
                finished.append((strength, path))
                continue
            for source in sources[np.argsort(-row[sources])][:beam]:
                grown.append((strength * row[source], [int(source), *path]))
        partial = sorted(grown, key=lambda item: -item[0])[:beam]
        if (
            len(finished) >= n_paths
            and partial
            and partial[0][0] < sorted(finished, key=lambda f: -f[0])[n_paths - 1][0]
        ):
            break  # no partial path can still beat the n-th finished one (strengths only shrink)
    return sorted(finished, key=lambda item: -item[0])[:n_paths]


# -- de-embeddings ------------------------------------------------------------------------------------


@dataclass
class DeEmbedding:
    direct: list[
        tuple[str, float]
    ]  # tokens whose embedding most drives the feature straight through the residual stream
    heads: dict[
        tuple[int, int], list[tuple[str, float]]
    ]  # (layer, head) -> tokens that drive it through that head's OV


@torch.no_grad()
def de_embeddings(hf_model: Any, tokenizer, coder: SparseCoder, layer: int, feature: int, n: int = 10) -> DeEmbedding:
    """Which tokens most drive transcoder feature `feature` at MLP `layer`, directly and through each head's OV circuit.

    The norms' gains are folded in and their per-token scales left out (they depend on the context), as in
    Dunefsky et al.'s de-embeddings: score[t] = W_E[t] . r, with r = g_mlp * W_enc[:, f] directly, and
    r = g_attn * W_V[h]^T W_O[h]^T (g_post_attn * g_mlp * W_enc[:, f]) through head h of any layer up to `layer`
    (g_post_attn: Gemma's post-attention norm; 1 elsewhere). W_E includes Gemma's sqrt(d) embedding scale.
    """
    shape = _shape(hf_model)
    family = shape.family
    if not 0 <= feature < coder.config.n_latents:
        raise TaskError(
            f"Feature {feature} is out of range: the transcoder has features 0 to {coder.config.n_latents - 1}."
        )
    blocks = families.decoder_layers(hf_model)
    embedding = hf_model.get_input_embeddings()
    embed = embedding.weight.float() * float(getattr(embedding, "embed_scale", 1.0))
    reader = coder.W_enc[:, feature].float() * families.norm_gain(families.part(blocks[layer], family.mlp_norm))

    def top(readout: torch.Tensor) -> list[tuple[str, float]]:
        values, ids = (embed @ readout).topk(n)
        return [(tokenizer.decode([i]), v) for i, v in zip(ids.tolist(), values.tolist())]

    heads = {}
    d_head = shape.d_head
    for source in range(layer + 1):
        block = blocks[source]
        attention = families.part(block, family.attention)
        W_O = families.output_weights(attention, family)[0].float()  # [d, H * d_head]
        W_V = families.value_weights(attention, family.qkv_layout, shape.n_heads, d_head)[
            0
        ].float()  # [n_kv * d_head, d]
        into_residual = reader
        if family.post_attn_norm:
            into_residual = reader * families.norm_gain(families.part(block, family.post_attn_norm))
        attn_gain = families.norm_gain(families.part(block, family.attn_norm))
        for head in range(shape.n_heads):
            kv = head // shape.groups
            through = W_O[:, head * d_head : (head + 1) * d_head].T @ into_residual  # [d_head]
            readout = (W_V[kv * d_head : (kv + 1) * d_head].T @ through) * attn_gain
            heads[(source, head)] = top(readout)
    return DeEmbedding(direct=top(reader), heads=heads)


# -- export in circuit-tracer's graph format ---------------------------------------------------------

FEATURE_TYPES = {
    "embedding": "embedding",
    "feature": "cross layer transcoder",
    "error": "mlp reconstruction error",
    "logit": "logit",
}

# The subset of circuit-tracer's graph JSON that this exporter writes (their frontend reads these
# fields; it ignores fields it does not know). Validated by validate_graph_json in the tests.
GRAPH_SCHEMA = {
    "type": "object",
    "required": ["metadata", "qParams", "nodes", "links"],
    "properties": {
        "metadata": {
            "type": "object",
            "required": ["slug", "scan", "prompt", "prompt_tokens"],
            "properties": {
                "slug": {"type": "string"},
                "scan": {"type": "string"},
                "prompt": {"type": "string"},
                "prompt_tokens": {"type": "array", "items": {"type": "string"}},
                "node_threshold": {"type": "number"},
                "edge_threshold": {"type": "number"},
                "replacement_score": {"type": "number"},
                "completeness_score": {"type": "number"},
                "transcoders": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        },
        "qParams": {"type": "object", "required": ["pinnedIds", "supernodes", "linkType"]},
        "nodes": {
            "type": "array",
            "items": {
                "type": "object",
                "required": [
                    "node_id",
                    "feature",
                    "layer",
                    "ctx_idx",
                    "feature_type",
                    "jsNodeId",
                    "influence",
                    "activation",
                    "is_target_logit",
                    "clerp",
                ],
                "properties": {
                    "node_id": {"type": "string"},
                    "feature": {"type": ["integer", "null"]},
                    "layer": {"type": "string"},
                    "ctx_idx": {"type": "integer", "minimum": 0},
                    "feature_type": {"enum": list(FEATURE_TYPES.values())},
                    "jsNodeId": {"type": "string"},
                    "influence": {"type": "number"},
                    "activation": {"type": "number"},
                    "is_target_logit": {"type": "boolean"},
                    "clerp": {"type": "string"},
                },
            },
        },
        "links": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["source", "target", "weight"],
                "properties": {
                    "source": {"type": "string"},
                    "target": {"type": "string"},
                    "weight": {"type": "number"},
                },
            },
        },
    },
}


def graph_json(graph: AttributionGraph, slug: str, model: str, node_threshold: float, edge_threshold: float) -> dict:
    """The pruned graph as circuit-tracer's frontend reads it; layer is "E" for embeddings and "Lgt" for the logit."""

    def layer_label(node: Node) -> str:
        return {"embedding": "E", "logit": "Lgt"}.get(node.kind, str(node.layer))

    kept = np.flatnonzero(graph.kept)
    nodes = []
    for index in kept:
        node = graph.nodes[index]
        label = {
            "feature": f"L{node.layer} #{node.feature} on {node.token!r}",
            "embedding": f"token {node.token!r}",
            "error": f"L{node.layer} error on {node.token!r}",
            "logit": f"logit {node.token!r}",
        }[node.kind]
        nodes.append(
            {
                "node_id": node.node_id,
                "feature": node.feature,
                "layer": layer_label(node),
                "ctx_idx": node.position,
                "feature_type": FEATURE_TYPES[node.kind],
                "jsNodeId": node.node_id,
                "influence": node.influence,
                "activation": node.activation,
                "is_target_logit": node.kind == "logit",
                "clerp": label,
            }
        )
    # per_unit: the weight per unit of source activation (features only), the input-invariant part of the edge.
    links = [
        {
            "source": graph.nodes[s].node_id,
            "target": graph.nodes[t].node_id,
            "weight": float(graph.adjacency[t, s]),
            "per_unit": float(graph.per_unit[t, s]),
        }
        for t, s in zip(*np.nonzero(graph.kept_edges))
    ]
    return {
        "metadata": {
            "slug": slug,
            "scan": model,
            "prompt": graph.prompt,
            "prompt_tokens": graph.tokens,
            "node_threshold": node_threshold,
            "edge_threshold": edge_threshold,
            "replacement_score": graph.replacement_score,
            "completeness_score": graph.completeness_score,
            "target_token": graph.target_token,
            "target_logit": graph.target_logit,
            "transcoders": {str(layer): name for layer, name in graph.transcoders.items()},
        },
        "qParams": {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""},
        "nodes": nodes,
        "links": links,
    }


def validate_graph_json(data: dict) -> None:
    """Raise jsonschema.ValidationError if `data` does not follow GRAPH_SCHEMA, or a link names a missing node."""
    import jsonschema

    jsonschema.validate(data, GRAPH_SCHEMA)
    ids = {node["node_id"] for node in data["nodes"]}
    missing = [link for link in data["links"] if link["source"] not in ids or link["target"] not in ids]
    if missing:
        raise jsonschema.ValidationError(
            f"{len(missing)} links name nodes that are not in the graph, e.g. {missing[0]}"
        )


# -- running it on a store ----------------------------------------------------------------------


def load_transcoder(store: Store, name: str) -> tuple[int, SparseCoder, str]:
    """(layer, transcoder, the model of its run) for a stored blocks.L.mlp.hook_in -> blocks.L.mlp.hook_out dictionary."""
    from workbench.dictionaries import load_dictionary
    from workbench.hooks import parse_hook
    from workbench.store.lookups import completed_dictionary

    record = completed_dictionary(store, name)
    point = parse_hook(record.hook, 10**6)
    out = parse_hook(record.hook_out, 10**6) if record.hook_out else None
    if point.kind != "mlp.hook_in" or out is None or out.kind != "mlp.hook_out" or out.layer != point.layer:
        raise TaskError(
            f"'{name}' maps {record.hook} to {record.hook_out}; attribution graphs and de-embeddings "
            "need transcoders from blocks.L.mlp.hook_in to blocks.L.mlp.hook_out."
        )
    return point.layer, load_dictionary(store.root / record.path).eval(), lookups.run(store, record.run).model


@dataclass
class GraphConfig:
    prompt: str
    """The prompt whose next token is explained."""
    transcoders: list[str]
    """Transcoder names from the store, one per MLP layer at most."""
    store: str
    """The store directory."""
    target: str | None = None
    """The answer token whose logit is explained (default: the top prediction)."""
    node_threshold: float = 0.8
    """Keep the features that carry this share of the logit's influence."""
    edge_threshold: float = 0.98
    """Keep the edges that carry this share of the edge influence."""
    max_features: int = 4096
    """Refuse graphs with more active features."""
    name: str | None = None
    """Graph name; re-using one replaces it."""
    json_path: str | None = None
    """Also write the graph's JSON here."""
    device: str = "auto"
    """Where it runs: auto (cuda when available, else cpu), cpu, cuda, cuda:N or mps (so far: cpu only)."""
    dtype: str = "float32"
    """Compute precision; attribution graphs are computed in float32 so far."""


@dataclass
class GraphResult:
    """A stored attribution graph: its catalog record (pruned sizes, scores, the JSON's path), and the full graph
    with every node's influence."""

    graph: GraphRecord
    attribution: AttributionGraph


def run_graph(config: GraphConfig) -> GraphResult:
    """Build, prune and store the attribution graph of the prompt through the transcoders."""
    placement = resolve_placement(config.device, config.dtype)
    require_cpu(placement, "Attribution graphs", float32_only=True)
    store = Store.open_existing(config.store)
    if not config.transcoders:
        raise TaskError(
            "Give at least one transcoder (--transcoders NAME[,NAME...]); train one per MLP layer with "
            "`workbench train --hook blocks.L.mlp.hook_in --out blocks.L.mlp.hook_out --arch transcoder ...`."
        )
    coders: dict[int, SparseCoder] = {}
    names: dict[int, str] = {}
    models: set[str] = set()
    for name in config.transcoders:
        layer, coder, model = load_transcoder(store, name)
        if layer in coders:
            raise TaskError(f"Two transcoders for layer {layer} ({names[layer]} and {name}); give one per layer.")
        coders[layer], names[layer] = coder, name
        models.add(model)
    if len(models) > 1:
        raise TaskError(
            f"The transcoders come from runs of different models ({', '.join(sorted(models))}); "
            "give transcoders of one model."
        )
    model = models.pop()
    hf_model, tokenizer = load_hf_model(resolve_model_dir(model, store.root / "models"))
    started = time.perf_counter()
    graph = build_graph(hf_model, tokenizer, config.prompt, coders, config.target, config.max_features)
    graph.transcoders = names
    prune(graph, config.node_threshold, config.edge_threshold)
    wall_s = time.perf_counter() - started
    name = check_run_name(config.name or make_run_name("graph", model.split("/")[-1], config.prompt[:40]))
    data = graph_json(graph, name, model, config.node_threshold, config.edge_threshold)
    folder = store.root / "graphs"
    folder.mkdir(exist_ok=True)
    path = folder / f"{name}.json"
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(data))
    partial.replace(path)  # whole or not at all: the catalog row below points at a complete file
    if config.json_path:
        Path(config.json_path).write_text(json.dumps(data, indent=1))
    record = GraphRecord(
        graph=name,
        model=model,
        prompt=config.prompt,
        target_token=graph.target_token,
        target_logit=graph.target_logit,
        transcoders=[names[l] for l in sorted(names)],
        n_nodes=len(graph.nodes),
        n_edges=int((graph.adjacency != 0).sum()),
        n_kept_nodes=len(data["nodes"]),
        n_kept_edges=len(data["links"]),
        replacement_score=graph.replacement_score,
        completeness_score=graph.completeness_score,
        node_threshold=config.node_threshold,
        edge_threshold=config.edge_threshold,
        path=str(path.relative_to(store.root)),
        wall_s=wall_s,
        package_version=package_version(),
        git_commit=git_commit(),
        device=placement.device_name,
        dtype=placement.dtype_name,
    )
    return GraphResult(replace_graph(store, record), graph)


@dataclass
class DeembedConfig:
    store: str
    """The store directory."""
    dictionary: str
    """A transcoder (blocks.L.mlp.hook_in -> blocks.L.mlp.hook_out)."""
    feature: int
    """The transcoder feature to de-embed."""
    tokens: int = 10
    """Tokens listed per path."""
    heads: int = 5
    """Heads shown, strongest first."""


@dataclass
class DeembedResult:
    """The tokens that most drive a transcoder feature: directly, and through its strongest heads."""

    dictionary: str
    layer: int  # the transcoder's MLP layer
    feature: int
    direct: list[tuple[str, float]]
    heads: list[tuple[tuple[int, int], list[tuple[str, float]]]]  # ((layer, head), tokens), strongest first


def run_deembed(config: DeembedConfig) -> DeembedResult:
    """De-embed one transcoder feature with the model of the transcoder's run."""
    store = Store.open_existing(config.store)
    layer, coder, model = load_transcoder(store, config.dictionary)
    hf_model, tokenizer = load_hf_model(resolve_model_dir(model, store.root / "models"))
    result = de_embeddings(hf_model, tokenizer, coder, layer, config.feature, config.tokens)
    strongest = sorted(result.heads.items(), key=lambda item: -item[1][0][1])[: config.heads]
    return DeembedResult(config.dictionary, layer, config.feature, result.direct, strongest)
