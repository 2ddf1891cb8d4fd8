"""An attribution graph as data, and what is computed from it alone: influence, pruning, scores, paths.

No model and no store here: `attribute.py` builds graphs, `export.py` writes them in circuit-tracer's format,
`graph_runs.py` stores them. Node order: embeddings (one per position), features, errors (one per layer and
position), targets (logits or custom targets) last. `adjacency[target, source]` is the edge weight.

Influence, pruning and the two scores follow circuit-tracer's definitions (circuit_tracer/graph.py:
compute_influence, prune_graph, compute_graph_scores), written here in numpy:
  - every row is normalised to sum |weight| = 1 (A);
  - a node's influence is w A + w A^2 + ..., w = the targets' weights (their probabilities; 1 for a custom
    target), i.e. the summed products of normalised weights along every path to a target;
  - nodes are kept until `node_threshold` of the total influence is covered (embeddings and targets always),
    edges (scored by A * (influence + w) of their target, on the node-pruned graph) until `edge_threshold`;
    then features and errors without a kept outgoing edge, and features without a kept incoming one, are dropped,
    repeatedly, until nothing changes;
  - replacement score: embeddings' influence / (embeddings' + errors' influence);
  - completeness score: the (influence + w)-weighted mean over nodes of the share of each node's input that
    does not come from error nodes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

KINDS = ("embedding", "feature", "error", "logit")


@dataclass
class Node:
    node_id: str
    kind: str  # embedding | feature | error | logit (every target, custom ones included, is a "logit" node)
    layer: int  # -1 for embeddings; n_layers for targets
    position: int
    feature: int | None = None  # the feature's index within its layer's dictionary
    activation: float = 0.0  # feature activation, target value, or source norm for embeddings and errors
    token: str = ""  # the token at the position; a target's label
    vocab_id: int = -1  # embeddings: the token id; targets: the vocabulary index, or vocab size + i for custom ones
    weight: float = 0.0  # targets: the weight influence starts from (their probability, 1 for custom targets)


@dataclass
class AttributionGraph:
    prompt: str
    tokens: list[str]
    nodes: list[Node]
    adjacency: np.ndarray  # [targets = nodes, sources = nodes]: edge weights, row = target
    per_unit: np.ndarray  # the same edges divided by the source's activation (features), else 0
    bias: np.ndarray  # [nodes]: the constant part of each target's value (biases)
    n_layers: int = 0
    transcoders: dict[int, str] = field(default_factory=dict)  # layer -> the name of its dictionary

    @property
    def kinds(self) -> np.ndarray:
        return np.array([node.kind for node in self.nodes])

    @property
    def target_weights(self) -> np.ndarray:
        """w: each target's weight, 0 for every other node."""
        return np.array([node.weight if node.kind == "logit" else 0.0 for node in self.nodes])

    @property
    def targets(self) -> list[Node]:
        return [node for node in self.nodes if node.kind == "logit"]


@dataclass(frozen=True)
class Pruned:
    """What pruning keeps; the graph itself is not changed."""

    node_mask: np.ndarray  # [nodes] bool
    edge_mask: np.ndarray  # [nodes, nodes] bool, like the adjacency
    influence: np.ndarray  # [nodes]: each node's influence on the targets (before pruning)

    @property
    def n_nodes(self) -> int:
        return int(self.node_mask.sum())

    @property
    def n_edges(self) -> int:
        return int(self.edge_mask.sum())


def normalised(adjacency: np.ndarray) -> np.ndarray:
    """|A| with each row scaled to sum 1 (rows without inputs stay 0)."""
    magnitude = np.abs(adjacency)
    totals = magnitude.sum(1, keepdims=True)
    return np.divide(magnitude, totals, out=np.zeros_like(magnitude), where=totals > 0)


def influence(normalised_adjacency: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """w A + w A^2 + ...: the graph is acyclic, so the series ends after at most its depth (a few dozen steps)."""
    step = weights @ normalised_adjacency
    total = step.copy()
    for _ in range(len(weights)):
        if not step.any():
            return total
        step = step @ normalised_adjacency
        total += step
    raise ValueError("The graph has a cycle: influence does not converge.")


def _threshold(scores: np.ndarray, share: float) -> float:
    """The smallest score among the largest ones that together make up `share` of the total."""
    ordered = np.sort(scores.ravel())[::-1]
    total = ordered.sum()
    if total <= 0:
        return np.inf
    index = min(int(np.searchsorted(np.cumsum(ordered) / total, share)), len(ordered) - 1)
    return float(ordered[index])


def prune(graph: AttributionGraph, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> Pruned:
    """The nodes and edges that carry `node_threshold` and `edge_threshold` of the influence (module docstring)."""
    for name, value in (("node_threshold", node_threshold), ("edge_threshold", edge_threshold)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be between 0 and 1, not {value}.")
    kinds = graph.kinds
    weights = graph.target_weights
    node_influence = influence(normalised(graph.adjacency), weights)
    always = np.isin(kinds, ("embedding", "logit"))
    node_mask = (node_influence >= _threshold(node_influence, node_threshold)) | always
    pruned = graph.adjacency * node_mask[:, None] * node_mask[None, :]
    pruned_normalised = normalised(pruned)
    edge_scores = pruned_normalised * (influence(pruned_normalised, weights) + weights)[:, None]
    edge_mask = (edge_scores >= _threshold(edge_scores, edge_threshold)) & (edge_scores > 0)
    droppable = np.isin(kinds, ("feature", "error"))
    features = kinds == "feature"
    while True:
        edge_mask &= node_mask[:, None] & node_mask[None, :]
        keep = node_mask & ~(droppable & ~edge_mask.any(0)) & ~(features & ~edge_mask.any(1))
        if (keep == node_mask).all():
            return Pruned(node_mask, edge_mask, node_influence)
        node_mask = keep


def scores(graph: AttributionGraph) -> tuple[float, float]:
    """(replacement score, completeness score) of the unpruned graph (module docstring)."""
    kinds = graph.kinds
    weights = graph.target_weights
    A = normalised(graph.adjacency)
    node_influence = influence(A, weights)
    embeddings = node_influence[kinds == "embedding"].sum()
    errors = node_influence[kinds == "error"].sum()
    replacement = float(embeddings / max(embeddings + errors, 1e-12))
    non_error = 1 - A[:, kinds == "error"].sum(1)
    output = node_influence + weights
    completeness = float((non_error * output).sum() / max(output.sum(), 1e-12))
    return replacement, completeness


def greedy_paths(graph: AttributionGraph, n_paths: int = 5, beam: int = 50) -> list[tuple[float, list[int]]]:
    """The strongest paths from a source (embedding or error) to the first target, found greedily backwards.

    A path's strength is the product of its normalised |edge| shares; a beam of the best partial
    paths is extended one edge at a time, as in Dunefsky et al.'s greedy path search.
    Returns (strength, node indices from source to target), strongest first.
    """
    A = normalised(graph.adjacency)
    target = int(np.flatnonzero(graph.kinds == "logit")[0])
    partial = [(1.0, [target])]
    finished: list[tuple[float, list[int]]] = []
    while partial:
        grown = []
        for strength, path in partial:
            row = A[path[0]]
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
