"""Attribution graphs in circuit-tracer's frontend format, and the folder its server serves.

What circuit-tracer 0.5 defines and reads (circuit_tracer/frontend/graph_models.py, feature_models.py,
utils/create_graph_files.py, frontend/assets): a graph is `{metadata, qParams, nodes, links}`; node ids and
`feature` values follow its Node factory methods:
  feature  node_id {layer}_{feature}_{pos}, feature = cantor(layer, feature), jsNodeId {layer}_{feature}-0
  error    node_id 0_{layer}_{pos}, feature -1, jsNodeId {layer}_{pos}-0
  token    node_id E_{vocab id}_{pos}, feature = pos, layer "E", jsNodeId E_{vocab id}-{pos}
  logit    node_id {n_layers + 1}_{vocab id}_{pos}, feature = vocab id, layer str(n_layers + 1),
           jsNodeId L_{vocab id}-{pos}, clerp 'Output "{token}" (p={prob:.3f})' (the frontend parses p from it)
A node's `influence` is its cumulative influence share (nodes sorted by influence, largest first), which the
frontend's pruning slider compares with the threshold; we add the node's own influence as `node_influence`.
Extra fields are ours (the frontend and the pydantic models ignore them): `per_unit` on links, the scores,
targets and transcoder names in the metadata.

The export folder (`workbench circuit export`) is what `circuit_tracer.frontend.serve(data_dir=DIR)` serves:
  DIR/graph-metadata.json              {"graphs": [metadata, ...]}, each entry as create_graph_files writes it
  DIR/<slug>.json                      the graph
  DIR/features/<dictionary>/<cantor(layer, feature)>.json   one feature_models.Model per feature node
The metadata's `scan` is "custom-<digest>" and `transcoder_list[layer]` is "./data/features/<dictionary>", which
is how the frontend finds a layer's feature files when a graph mixes dictionaries.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from workbench.circuits.graph import AttributionGraph, Node, Pruned

FEATURE_TYPES = {
    "embedding": "embedding",
    "feature": "cross layer transcoder",
    "error": "mlp reconstruction error",
    "logit": "logit",
}
METADATA_FIELDS = ("slug", "scan", "transcoder_list", "prompt_tokens", "prompt", "node_threshold", "schema_version")


def cantor(x: int, y: int) -> int:
    """circuit-tracer's unique integer for (layer, feature)."""
    return (x + y) * (x + y + 1) // 2 + y


def feature_folder(dictionary: str) -> str:
    """Where the frontend looks for a dictionary's feature files, relative to its page."""
    return f"./data/features/{dictionary}"


def _node(
    graph: AttributionGraph,
    node: Node,
    cumulative: float,
    influence: float,
    first_target: bool,
    labels: dict[tuple[str, int], str],
) -> dict:
    common = {"node_id": node.node_id, "ctx_idx": node.position, "influence": cumulative,
              "node_influence": influence, "activation": node.activation}  # fmt: skip
    if node.kind == "feature":
        assert node.feature is not None
        return common | {
            "feature": cantor(node.layer, node.feature),
            "layer": str(node.layer),
            "feature_type": FEATURE_TYPES["feature"],
            "jsNodeId": f"{node.layer}_{node.feature}-0",
            "clerp": labels.get((graph.transcoders.get(node.layer, ""), node.feature), ""),
            "feature_index": node.feature,
            "dictionary": graph.transcoders.get(node.layer, ""),
        }
    if node.kind == "error":
        return common | {
            "feature": -1,
            "layer": str(node.layer),
            "feature_type": FEATURE_TYPES["error"],
            "jsNodeId": f"{node.layer}_{node.position}-0",
            "clerp": "",
        }
    if node.kind == "embedding":
        return common | {
            "feature": node.position,
            "layer": "E",
            "feature_type": FEATURE_TYPES["embedding"],
            "jsNodeId": f"E_{node.vocab_id}-{node.position}",
            "clerp": "",
        }
    return common | {
        "feature": node.vocab_id,
        "layer": str(graph.n_layers + 1),
        "feature_type": FEATURE_TYPES["logit"],
        "jsNodeId": f"L_{node.vocab_id}-{node.position}",
        "is_target_logit": first_target,
        "token_prob": node.weight,
        "clerp": f'Output "{node.token}" (p={node.weight:.3f})',
    }


def scan_name(transcoder_list: list[str]) -> str:
    return "custom-" + hashlib.sha256("-".join(transcoder_list).encode()).hexdigest()[:12]


def graph_json(
    graph: AttributionGraph,
    pruned: Pruned,
    slug: str,
    node_threshold: float,
    edge_threshold: float,
    extra_metadata: dict | None = None,
    labels: dict[tuple[str, int], str] | None = None,
) -> dict:
    """The pruned graph as circuit-tracer's frontend reads it (module docstring). `labels` ((dictionary, feature) ->
    text, from autointerp) become the feature nodes' clerps, the labels the frontend draws."""
    order = np.argsort(-pruned.influence, kind="stable")
    total = pruned.influence.sum()
    cumulative = np.zeros(len(order))
    cumulative[order] = np.cumsum(pruned.influence[order]) / (total if total > 0 else 1.0)
    targets, sources = np.nonzero(pruned.edge_mask)
    used = set(targets.tolist()) | set(sources.tolist())
    first_target = next(i for i, node in enumerate(graph.nodes) if node.kind == "logit")
    nodes = [
        _node(graph, node, float(cumulative[i]), float(pruned.influence[i]), i == first_target, labels or {})
        for i, node in enumerate(graph.nodes)
        if pruned.node_mask[i] and (i in used or node.kind in ("embedding", "logit"))
    ]
    links = [
        {
            "source": graph.nodes[s].node_id,
            "target": graph.nodes[t].node_id,
            "weight": float(graph.adjacency[t, s]),
            "per_unit": float(graph.per_unit[t, s]),
        }
        for t, s in zip(targets, sources)
    ]
    transcoder_list = [feature_folder(graph.transcoders[layer]) if layer in graph.transcoders else ""
                       for layer in range(graph.n_layers)]  # fmt: skip
    metadata = {
        "slug": slug,
        "scan": scan_name(transcoder_list),
        "transcoder_list": transcoder_list,
        "prompt_tokens": graph.tokens,
        "prompt": graph.prompt,
        "node_threshold": node_threshold,
        "schema_version": 1,
        "edge_threshold": edge_threshold,
        "targets": [
            {"label": t.token, "vocab_id": t.vocab_id, "weight": t.weight, "value": t.activation} for t in graph.targets
        ],  # fmt: skip
        "transcoders": {str(layer): name for layer, name in sorted(graph.transcoders.items())},
    }
    return {
        "metadata": metadata | (extra_metadata or {}),
        "qParams": {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""},
        "nodes": nodes,
        "links": links,
    }


def feature_json(
    dictionary: str,
    feature: int,
    layer: int,
    top: list,
    quantiles: list,
    top_logits: list[str],
    bottom_logits: list[str],
    histogram_edges: np.ndarray,
    histogram_counts: np.ndarray,
    density: float,
) -> dict:
    """One feature's file as circuit-tracer's feature_models.Model defines it.

    `top` holds workbench.features.Context windows; `quantiles` (name, [Context]) pairs."""

    def example(context) -> dict:
        return {
            "tokens_acts_list": [float(v) for v in context.values],
            "train_token_ind": int(context.centre),
            "is_repeated_datapoint": False,
            "tokens": list(context.tokens),
        }

    groups = [("Top activations", top)] + list(quantiles)
    values = [v for _, contexts in groups for c in contexts for v in c.values]
    return {
        "transcoder_id": dictionary,
        "index": cantor(layer, feature),
        "feature_index": feature,
        "layer": layer,
        "examples_quantiles": [
            {"quantile_name": name, "examples": [example(c) for c in contexts]} for name, contexts in groups if contexts
        ],
        "top_logits": top_logits,
        "bottom_logits": bottom_logits,
        "act_min": float(min(values, default=0.0)),
        "act_max": float(max(values, default=1.0)),
        "quantile_values": [float(e) for e in histogram_edges],
        "histogram": [float(c) for c in histogram_counts],
        "activation_frequency": float(density),
    }


def graph_metadata_entry(data: dict) -> dict:
    """A graph's entry in graph-metadata.json: its metadata's fields as circuit-tracer's Metadata model has them."""
    return {key: data["metadata"].get(key) for key in METADATA_FIELDS}


def add_to_folder(folder: Path, data: dict) -> Path:
    """Write the graph into an export folder and list it in graph-metadata.json (replacing one of the same slug).

    Each file is written whole and renamed into place, so a reader never sees half of one."""
    folder.mkdir(parents=True, exist_ok=True)
    slug = data["metadata"]["slug"]
    path = folder / f"{slug}.json"
    write_atomically(path, json.dumps(data))
    index_path = folder / "graph-metadata.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {"graphs": []}
    index["graphs"] = [g for g in index.get("graphs", []) if g.get("slug") != slug] + [graph_metadata_entry(data)]
    write_atomically(index_path, json.dumps(index, indent=2))
    return path


def write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    partial.replace(path)


def subgraph(data: dict, pinned: list[str], supernodes: list[list[str]]) -> dict:
    """The graph restricted to the pinned nodes, each supernode ([name, member ids...], circuit-tracer's qParams
    layout) drawn as one node: at its members' mean position and layer, with their influence and activation summed
    and the links into and out of the group summed. Links inside a supernode are dropped."""
    group_of = {member: group[0] for group in supernodes for member in group[1:] if member in pinned}
    by_id = {node["node_id"]: node for node in data["nodes"]}
    nodes: list[dict] = [dict(by_id[i]) for i in pinned if i in by_id and i not in group_of]
    for group in supernodes:
        members = [by_id[i] for i in group[1:] if i in by_id and i in pinned]
        if not members:
            continue
        numeric = [int(m["layer"]) for m in members if m["layer"].isdigit()]
        nodes.append({
            "node_id": group[0],
            "feature_type": members[0]["feature_type"],
            "layer": str(round(sum(numeric) / len(numeric))) if numeric else members[0]["layer"],
            "ctx_idx": round(sum(m["ctx_idx"] for m in members) / len(members)),
            "influence": min(m["influence"] for m in members),
            "node_influence": sum(m.get("node_influence", 0.0) for m in members),
            "activation": sum(m["activation"] for m in members),
            "clerp": f"{group[0]} ({len(members)} nodes)",
            "feature": -1,
        })  # fmt: skip
    kept = {node["node_id"] for node in nodes}
    summed: dict[tuple[str, str], float] = {}
    for link in data["links"]:
        source, target = group_of.get(link["source"], link["source"]), group_of.get(link["target"], link["target"])
        if source in kept and target in kept and source != target:
            summed[(source, target)] = summed.get((source, target), 0.0) + link["weight"]
    links = [{"source": s, "target": t, "weight": w} for (s, t), w in summed.items()]
    return {"metadata": data["metadata"], "qParams": data["qParams"], "nodes": nodes, "links": links}
