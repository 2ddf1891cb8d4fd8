"""Attribution-graph commands and their store I/O: `workbench circuit graph|export|intervene|deembed`.

The parts, as circuit-tracer splits them:
  replacement.py    the local replacement model (frozen attention and norms, transcoders, errors)
  attribute.py      exact edges and attribution targets -> AttributionGraph
  graph.py          the graph as data: influence, pruning (returns what it keeps), scores, paths
  export.py         circuit-tracer's JSON, feature files and served folder
  interventions.py  changing features in the real model, predicted against actual; faithfulness
  deembed.py        de-embeddings
This module loads transcoders from the store (checking they fit the model and each other), estimates memory
before any work, and writes graphs and interventions to the catalog.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from workbench.circuits.attribute import (
    Targets,
    available_memory,
    build_graph,
    dense_bytes,
    first_target,
    max_nodes,
    prompt_ids,
)
from workbench.circuits.deembed import de_embeddings
from workbench.circuits.export import add_to_folder, cantor, feature_folder, feature_json, graph_json, write_atomically
from workbench.circuits.graph import AttributionGraph, prune, scores
from workbench.circuits.interventions import faithfulness, feature_additions, predicted_changes, run_model_with
from workbench.circuits.replacement import CLTReplacement, Replacement, TranscoderSet
from workbench.circuits.tasks import TaskError
from workbench.devices import require_cpu, resolve_placement
from workbench.dictionaries.base import SparseCoder
from workbench.models import families, load_hf_model, resolve_model_dir
from workbench.provenance import git_commit, package_version
from workbench.store import Store, check_run_name, explanations, lookups, make_run_name
from workbench.store.analyses import add_intervention, replace_graph
from workbench.store.records import DictionaryRecord, GraphRecord, InterventionRecord

ALL = "all"


# -- transcoders from the store -----------------------------------------------------------------------


def _transcoder_layer(record: DictionaryRecord) -> int | None:
    """The MLP layer of a blocks.L.mlp.hook_in -> blocks.L.mlp.hook_out transcoder, else None."""
    from workbench.hooks import parse_hook

    point = parse_hook(record.hook, 10**6)
    out = parse_hook(record.hook_out, 10**6) if record.hook_out else None
    if point.kind != "mlp.hook_in" or out is None or out.kind != "mlp.hook_out" or out.layer != point.layer:
        return None
    return point.layer


def load_transcoder(store: Store, name: str) -> tuple[int, SparseCoder, str]:
    """(layer, transcoder, the model of its run) for a stored blocks.L.mlp.hook_in -> blocks.L.mlp.hook_out dictionary."""
    from workbench.dictionaries import load_dictionary

    record = lookups.completed_dictionary(store, name)
    layer = _transcoder_layer(record)
    if layer is None:
        raise TaskError(
            f"'{name}' maps {record.hook} to {record.hook_out}; attribution graphs and de-embeddings "
            "need transcoders from blocks.L.mlp.hook_in to blocks.L.mlp.hook_out."
        )
    return layer, load_dictionary(store.root / record.path).eval(), lookups.run(store, record.run).model


def _every_layer(store: Store, model: str | None) -> list[str]:
    """`--transcoders all`: the store's transcoders of one model, one per layer, covering every layer."""
    by_model: dict[str, dict[int, list[str]]] = {}
    runs: dict[str, Any] = {}  # model -> the run record of one of its transcoders (its n_layers)
    for name in lookups.dictionary_names(store, complete=True):
        record = lookups.completed_dictionary(store, name)
        layer = _transcoder_layer(record)
        if layer is not None and record.arch != "clt":
            run = lookups.run(store, record.run)
            runs.setdefault(run.model, run)
            by_model.setdefault(run.model, {}).setdefault(layer, []).append(name)
    if not by_model:
        raise TaskError(
            "The store has no transcoders. Train one per MLP layer: `workbench train --hook blocks.L.mlp.hook_in "
            "--out blocks.L.mlp.hook_out --arch batchtopk ...`."
        )
    if model is None and len(by_model) > 1:
        raise TaskError(f"The store has transcoders of several models ({', '.join(sorted(by_model))}); give --model.")
    model = model or next(iter(by_model))
    if model not in by_model:
        raise TaskError(f"The store has no transcoders of {model} (it has some of {', '.join(sorted(by_model))}).")
    layers, run = by_model[model], runs[model]
    missing = [layer for layer in range(run.n_layers) if layer not in layers]
    if missing:
        raise TaskError(
            f"--transcoders all needs one transcoder for each of {model}'s {run.n_layers} MLP layers; layers "
            f"{_ranges(missing)} have none. Train them (`workbench train --hook blocks.L.mlp.hook_in --out "
            "blocks.L.mlp.hook_out --arch batchtopk ...`), or name the transcoders to use."
        )
    doubled = {layer: names for layer, names in layers.items() if len(names) > 1}
    if doubled:
        layer, names = next(iter(sorted(doubled.items())))
        raise TaskError(
            f"Layer {layer} has several transcoders ({', '.join(sorted(names))}); name the ones to use with "
            "--transcoders NAME,NAME,..."
        )
    return [layers[layer][0] for layer in range(run.n_layers)]


def _ranges(values: list[int]) -> str:
    """[1, 2, 3, 7] -> "1-3, 7"."""
    runs: list[list[int]] = []
    for value in values:
        if runs and value == runs[-1][-1] + 1:
            runs[-1].append(value)
        else:
            runs.append([value])
    return ", ".join(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}" for run in runs)


@dataclass
class LoadedTranscoders:
    replacement: Replacement
    names: dict[int, str]  # layer -> the dictionary whose features read it (a CLT: the same name for each)
    model: str

    @property
    def distinct_names(self) -> list[str]:
        return list(dict.fromkeys(self.names[layer] for layer in sorted(self.names)))


def _load_clt(store: Store, name: str) -> LoadedTranscoders:
    from workbench.dictionaries import load_dictionary
    from workbench.dictionaries.clt import CrossLayerTranscoder

    record = lookups.completed_dictionary(store, name)
    clt = load_dictionary(store.root / record.path, expected_arch="clt").eval()
    assert isinstance(clt, CrossLayerTranscoder)
    return LoadedTranscoders(
        CLTReplacement(clt), {layer: name for layer in clt.layers}, lookups.run(store, record.run).model
    )


def load_transcoders(store: Store, names: list[str], model: str | None = None) -> LoadedTranscoders:
    """The named transcoders (or every layer's, for ["all"]), checked to be of one model and one per layer."""
    if not names:
        raise TaskError(
            "Give transcoders: --transcoders NAME[,NAME...] (one per MLP layer; a subset is fine) or --transcoders "
            "all; train them with `workbench train --hook blocks.L.mlp.hook_in --out blocks.L.mlp.hook_out ...`."
        )
    if names == [ALL]:
        names = _every_layer(store, model)
    arches = {name: lookups.completed_dictionary(store, name).arch for name in names}
    if "clt" in arches.values():
        if len(names) > 1:
            raise TaskError(
                f"{', '.join(n for n, a in arches.items() if a == 'clt')} is a cross-layer transcoder, which replaces "
                "every MLP it covers by itself; give it alone."
            )
        return _load_clt(store, names[0])
    coders: dict[int, SparseCoder] = {}
    by_layer: dict[int, str] = {}
    models: set[str] = set()
    for name in names:
        layer, coder, run_model = load_transcoder(store, name)
        if layer in coders:
            raise TaskError(f"Two transcoders for layer {layer} ({by_layer[layer]} and {name}); give one per layer.")
        coders[layer], by_layer[layer] = coder, name
        models.add(run_model)
    if len(models) > 1:
        raise TaskError(
            f"The transcoders come from runs of different models ({', '.join(sorted(models))}); "
            "give transcoders of one model."
        )
    return LoadedTranscoders(TranscoderSet(coders), by_layer, models.pop())


def check_fits(hf_model: Any, loaded: LoadedTranscoders) -> None:
    """Transcoders of another model or width are refused before any work."""
    d_model = hf_model.get_input_embeddings().weight.shape[1]
    n_layers = len(families.decoder_layers(hf_model))
    if isinstance(loaded.replacement, CLTReplacement):
        clt = loaded.replacement.clt
        name = loaded.distinct_names[0]
        if clt.layers[-1] >= n_layers or clt.d_model != d_model:
            raise TaskError(
                f"'{name}' covers layers {clt.layers[0]}-{clt.layers[-1]} at width {clt.d_model}; this model has "
                f"layers 0 to {n_layers - 1} at width {d_model}. It belongs to another model."
            )
        return
    for layer, coder in loaded.replacement.coders.items():
        name = loaded.names[layer]
        if layer >= n_layers:
            raise TaskError(f"'{name}' is for layer {layer}; the model has layers 0 to {n_layers - 1}.")
        widths = (coder.config.d_in, coder.config.output_width)
        if widths != (d_model, d_model):
            raise TaskError(
                f"'{name}' maps {widths[0]} to {widths[1]} values; this model's MLPs read and write {d_model}. "
                "It belongs to another model."
            )


# -- graphs ----------------------------------------------------------------------------------------------


@dataclass
class GraphConfig:
    prompt: str
    """The prompt whose next token is explained."""
    transcoders: list[str]
    """Transcoder names from the store, one per MLP layer at most, or `all`: one for every layer."""
    store: str
    """The store directory."""
    target: list[str] = field(default_factory=list)
    """Explain these tokens' logits (default: the most probable tokens, up to --top-p of probability)."""
    wrong: str | None = None
    """With one --target: explain logit(target) - logit(wrong), the logit difference."""
    direction: str | None = None
    """A .npy file of one vector [d_model]: explain its dot product with the residual stream at the last position."""
    direction_layer: int | None = None
    """With --direction: read it after this block (default: the last)."""
    top_p: float = 0.95
    """Default targets: the most probable tokens until their probabilities add up to this."""
    max_logits: int = 10
    """Default targets: at most this many tokens."""
    model: str | None = None
    """With --transcoders all: the model whose transcoders to use (default: the only one in the store)."""
    node_threshold: float = 0.8
    """Keep the nodes that carry this share of the targets' influence."""
    edge_threshold: float = 0.98
    """Keep the edges that carry this share of the edge influence."""
    max_features: int = 4096
    """Refuse graphs with more active features (memory grows with the square of the node count)."""
    faithfulness_features: int = 10
    """Ablate this many of the most influential features in the real model to score the graph's predictions."""
    batch_size: int = 256
    """Targets per batched backward pass."""
    name: str | None = None
    """Graph name; re-using one replaces it."""
    json_path: str | None = None
    """Also write the graph's JSON here."""
    device: str = "auto"
    """Where it runs: auto (cuda when available, else cpu), cpu, cuda, cuda:N or mps (so far: cpu only)."""
    dtype: str = "float32"
    """Compute precision; attribution graphs are computed in float32 so far."""

    def targets(self) -> Targets:
        direction = None
        if self.direction is not None:
            try:
                direction = np.load(self.direction)
            except (OSError, ValueError) as error:
                raise TaskError(f"--direction {self.direction}: not a readable .npy file ({error}).") from None
        if self.wrong is not None and len(self.target) != 1:
            raise TaskError("A logit difference needs exactly one --target (the answer) with --wrong.")
        return Targets(
            tokens=[] if self.wrong is not None else list(self.target),
            answer=self.target[0] if self.wrong is not None else None,
            wrong=self.wrong,
            direction=direction,
            direction_layer=self.direction_layer,
            direction_label=f"direction {Path(self.direction).name}" if self.direction else "direction",
            top_p=self.top_p,
            max_logits=self.max_logits,
        )


@dataclass
class GraphResult:
    """A stored attribution graph: its catalog record (pruned sizes, scores, the JSON's path), the full graph, and
    the faithfulness check's predicted and actual changes of the first target."""

    graph: GraphRecord
    attribution: AttributionGraph
    memory_estimate: int
    predicted: np.ndarray
    actual: np.ndarray


def memory_estimate(n_positions: int, n_layers: int, replacement: Replacement, config: GraphConfig) -> int:
    """Bytes the graph's matrices can need, from the prompt's length and the transcoders' sparsity alone."""
    if isinstance(replacement, CLTReplacement):
        per_position = replacement.clt.config.k * len(replacement.layers)
    else:
        per_position = sum(coder.config.k or coder.config.n_latents for coder in replacement.coders.values())
    features = min(config.max_features, n_positions * per_position)
    return dense_bytes(max_nodes(n_positions, n_layers, features, config.max_logits))


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def run_graph(config: GraphConfig) -> GraphResult:
    """Build, prune, check and store the attribution graph of the prompt through the transcoders."""
    placement = resolve_placement(config.device, config.dtype)
    require_cpu(placement, "Attribution graphs", float32_only=True)
    targets = config.targets()
    store = Store.open_existing(config.store)
    loaded = load_transcoders(store, config.transcoders, config.model)
    model_dir = resolve_model_dir(loaded.model, store.root / "models")
    hf_model, tokenizer = load_hf_model(model_dir)
    check_fits(hf_model, loaded)
    n_positions = prompt_ids(tokenizer, config.prompt).shape[1]
    n_layers = hf_model.config.num_hidden_layers
    estimate = memory_estimate(n_positions, n_layers, loaded.replacement, config)
    available = available_memory()
    if estimate > 0.8 * available:
        raise TaskError(
            f"This graph could need {_gib(estimate)} for its edge matrices ({n_positions} positions x {n_layers} "
            f"layers, up to {config.max_features} features); {_gib(available)} is available. Shorten the prompt, "
            "lower --max-features, or use fewer transcoders."
        )
    started = time.perf_counter()
    graph = build_graph(
        hf_model, tokenizer, config.prompt, loaded.replacement, targets, config.max_features, config.batch_size
    )
    graph.transcoders = loaded.names
    pruned = prune(graph, config.node_threshold, config.edge_threshold)
    replacement_score, completeness_score = scores(graph)
    ids = prompt_ids(tokenizer, config.prompt)
    reader = first_target(hf_model, tokenizer, targets, ids).read
    faithful, predicted, actual = faithfulness(
        hf_model, ids, graph, loaded.replacement, reader, config.faithfulness_features
    )
    wall_s = time.perf_counter() - started
    name = check_run_name(config.name or make_run_name("graph", loaded.model.split("/")[-1], config.prompt[:40]))
    data = graph_json(
        graph,
        pruned,
        name,
        config.node_threshold,
        config.edge_threshold,
        {
            "model": loaded.model,
            "replacement_score": replacement_score,
            "completeness_score": completeness_score,
            "faithfulness": None if np.isnan(faithful) else faithful,
            "target_spec": {
                "target": config.target,
                "wrong": config.wrong,
                "direction": config.direction,
                "direction_layer": config.direction_layer,
                "top_p": config.top_p,
                "max_logits": config.max_logits,
            },  # fmt: skip
            "direction_vector": None if targets.direction is None else np.asarray(targets.direction).ravel().tolist(),
        },
        labels=explanations.best_labels(store, loaded.distinct_names),
    )
    folder = store.root / "graphs"
    folder.mkdir(exist_ok=True)
    path = folder / f"{name}.json"
    write_atomically(path, json.dumps(data))  # whole or not at all: the catalog row below points at a complete file
    if config.json_path:
        Path(config.json_path).write_text(json.dumps(data, indent=1))
    first = graph.targets[0]
    record = GraphRecord(
        graph=name,
        model=loaded.model,
        prompt=config.prompt,
        target_token=first.token,
        target_logit=first.activation,
        transcoders=loaded.distinct_names,
        n_nodes=len(graph.nodes),
        n_edges=int((graph.adjacency != 0).sum()),
        n_kept_nodes=len(data["nodes"]),
        n_kept_edges=len(data["links"]),
        replacement_score=replacement_score,
        completeness_score=completeness_score,
        node_threshold=config.node_threshold,
        edge_threshold=config.edge_threshold,
        path=str(path.relative_to(store.root)),
        wall_s=wall_s,
        package_version=package_version(),
        git_commit=git_commit(),
        device=placement.device_name,
        dtype=placement.dtype_name,
        faithfulness=None if np.isnan(faithful) else faithful,
        n_targets=len(graph.targets),
    )
    return GraphResult(replace_graph(store, record), graph, estimate, predicted, actual)


# -- export --------------------------------------------------------------------------------------------


@dataclass
class ExportConfig:
    graph: str
    """The stored graph to export."""
    out: str
    """The folder to write (created if missing; other graphs already in it are kept and listed too)."""
    store: str
    """The store directory."""
    examples: int = 10
    """Top-activation contexts per feature (from the transcoder's encoding: `workbench encode`)."""


@dataclass
class ExportResult:
    folder: Path
    graph_path: Path
    feature_files: int
    not_encoded: list[str]  # transcoders whose features have logits but no example contexts


def run_export(config: ExportConfig) -> ExportResult:
    """Write a stored graph, its feature files and graph-metadata.json as circuit-tracer's server serves them."""
    from workbench import features as feature_reads
    from workbench.store.results import attribution_graph

    store = Store.open_existing(config.store)
    data = attribution_graph(store, config.graph)
    folder = Path(config.out)
    if folder.exists() and not folder.is_dir():
        raise TaskError(f"--out {folder} is a file; give a folder.")
    wanted: dict[str, set[tuple[int, int]]] = {}
    for node in data["nodes"]:
        if node["feature_type"] == "cross layer transcoder":
            wanted.setdefault(node["dictionary"], set()).add((int(node["layer"]), int(node["feature_index"])))
    hf_model = tokenizer = None
    if wanted:
        hf_model, tokenizer = load_hf_model(resolve_model_dir(data["metadata"]["model"], store.root / "models"))
    unembedding = feature_reads.Unembedding.from_model(hf_model, tokenizer) if hf_model is not None else None
    staging = folder.with_name(folder.name + ".partial-features")
    shutil.rmtree(staging, ignore_errors=True)
    count, not_encoded = 0, []
    for dictionary, pairs in sorted(wanted.items()):
        record = lookups.completed_dictionary(store, dictionary)
        view = feature_reads.DictionaryView(store, record)
        encoded = feature_reads.is_encoded(store, dictionary)
        if not encoded:
            not_encoded.append(dictionary)
        target = staging / Path(feature_folder(dictionary)).name
        target.mkdir(parents=True, exist_ok=True)
        for layer, feature in sorted(pairs):
            assert unembedding is not None
            top_logits, bottom_logits = view.logit_effects(unembedding, feature, 10)
            top, quantiles, edges, counts, density = [], [], np.zeros(0), np.zeros(0), 0.0
            if encoded:
                top = feature_reads.top_contexts(store, record, feature, config.examples)
                quantiles = [
                    (f"Interval {sample.low:.2f}-{sample.high:.2f}", sample.contexts)
                    for sample in feature_reads.quantile_contexts(store, record, feature)
                ]
                histogram = feature_reads.activation_histogram(store, record, feature)
                edges, counts = histogram.edges, histogram.counts
                density = feature_reads.feature_summary(store, record, feature).density
            body = feature_json(dictionary, feature, layer, top, quantiles, [t for t, _ in top_logits],
                                [t for t, _ in bottom_logits], edges, counts, density)  # fmt: skip
            (target / f"{cantor(layer, feature)}.json").write_text(json.dumps(body))
            count += 1
    # Feature folders go in whole, then the graph and its listing: a server never sees a graph without its features.
    features_root = folder / "features"
    features_root.mkdir(parents=True, exist_ok=True)
    if staging.exists():
        for dictionary_folder in staging.iterdir():
            destination = features_root / dictionary_folder.name
            if destination.exists():
                for file in dictionary_folder.iterdir():
                    file.replace(destination / file.name)
            else:
                dictionary_folder.replace(destination)
        shutil.rmtree(staging, ignore_errors=True)
    # Explanations written since the graph was built label its feature nodes now.
    labels = explanations.best_labels(store, sorted(wanted))
    for node in data["nodes"]:
        if node["feature_type"] == "cross layer transcoder":
            node["clerp"] = labels.get((node["dictionary"], int(node["feature_index"])), node.get("clerp", ""))
    graph_path = add_to_folder(folder, data)
    return ExportResult(folder, graph_path, count, not_encoded)


def save_graph_view(store_path: str, graph: str, pinned: list[str], supernodes: list[list[str]]) -> dict:
    """Save pinned nodes and supernodes ([name, member ids...]) into the stored graph's qParams, where
    circuit-tracer's frontend keeps them too; returns the graph as saved. Unknown node ids are refused."""
    from workbench.store.results import attribution_graph, graph_path

    store = Store.open_existing(store_path)
    data = attribution_graph(store, graph)
    ids = {node["node_id"] for node in data["nodes"]}
    unknown = sorted({i for i in pinned + [m for group in supernodes for m in group[1:]] if i not in ids})
    if unknown:
        raise TaskError(f"Node(s) {', '.join(unknown)} are not in graph '{graph}'.")
    names = [group[0] for group in supernodes]
    if len(set(names)) != len(names) or any(not name.strip() or name in ids for name in names):
        raise TaskError("Give each supernode a name of its own, not a node id.")
    data["qParams"] = data["qParams"] | {"pinnedIds": list(pinned), "supernodes": [list(g) for g in supernodes]}
    write_atomically(graph_path(store, graph), json.dumps(data))
    return data


# -- interventions ---------------------------------------------------------------------------------------


@dataclass
class InterveneConfig:
    graph: str
    """The stored graph whose features to change."""
    nodes: list[str]
    """Feature node ids from the graph's JSON (e.g. 3_1234_7: layer 3, feature 1234, position 7)."""
    store: str
    """The store directory."""
    scale: float = 0.0
    """Multiply each chosen feature's activation by this: 0 ablates, -1 flips, 2 doubles."""
    generate: int = 0
    """Also generate this many tokens greedily with the change applied at the prompt's positions."""


@dataclass
class InterveneResult:
    intervention: InterventionRecord
    generated_before: str
    generated_after: str


def _graph_again(store: Store, data: dict) -> tuple[Any, Any, LoadedTranscoders, AttributionGraph, Targets]:
    """Rebuild a stored graph's full (unpruned) form: same prompt, transcoders and targets; deterministic."""
    meta = data["metadata"]
    layers = sorted(meta["transcoders"], key=int)  # a CLT is named once per layer it covers
    loaded = load_transcoders(store, list(dict.fromkeys(meta["transcoders"][k] for k in layers)))
    hf_model, tokenizer = load_hf_model(resolve_model_dir(meta["model"], store.root / "models"))
    spec = meta.get("target_spec") or {}
    target = list(spec.get("target") or [])
    wrong = spec.get("wrong")
    vector = meta.get("direction_vector")
    targets = Targets(
        tokens=[] if wrong is not None else target,
        answer=target[0] if wrong is not None else None,
        wrong=wrong,
        direction=None if vector is None else np.asarray(vector, dtype=np.float32),
        direction_layer=spec.get("direction_layer"),
        direction_label=f"direction {Path(spec['direction']).name}" if spec.get("direction") else "direction",
        top_p=spec.get("top_p", 0.95),
        max_logits=spec.get("max_logits", 10),
    )
    graph = build_graph(hf_model, tokenizer, meta["prompt"], loaded.replacement, targets, max_features=10**9)
    graph.transcoders = loaded.names
    return hf_model, tokenizer, loaded, graph, targets


@torch.no_grad()
def _greedy(hf_model: Any, ids: torch.Tensor, additions: dict[int, torch.Tensor], n: int) -> list[int]:
    """n tokens, greedily, with additions[layer] applied at the prompt's positions on every step."""
    produced: list[int] = []
    for _ in range(n):
        current = torch.cat([ids, torch.tensor([produced], dtype=ids.dtype)], 1) if produced else ids
        padded = {layer: torch.cat([add, add.new_zeros(current.shape[1] - add.shape[0], add.shape[1])])
                  for layer, add in additions.items()}  # fmt: skip
        _, logits = run_model_with(hf_model, current, [lambda residuals, normed: normed.sum()], padded)
        produced.append(int(logits.argmax()))
    return produced


def run_intervene(config: InterveneConfig) -> InterveneResult:
    """Change the chosen features in the real model; report the target's actual change against the graph's."""
    from workbench.store.results import attribution_graph

    store = Store.open_existing(config.store)
    data = attribution_graph(store, config.graph)
    if not config.nodes:
        raise TaskError("Give feature nodes to change: --nodes ID[,ID...] (ids from the graph's JSON).")
    kept = {node["node_id"]: node for node in data["nodes"]}
    absent = [node for node in config.nodes if node not in kept]
    if absent:
        features = [n for n, node in kept.items() if node["feature_type"] == "cross layer transcoder"][:5]
        raise TaskError(
            f"Node(s) {', '.join(absent)} are not in graph '{config.graph}'. Its feature nodes include "
            f"{', '.join(features) or 'none'} (see the node_id fields of its JSON)."
        )
    not_features = [node for node in config.nodes if kept[node]["feature_type"] != "cross layer transcoder"]
    if not_features:
        raise TaskError(f"Node(s) {', '.join(not_features)} are not features; only feature nodes can be changed.")
    hf_model, tokenizer, loaded, graph, targets = _graph_again(store, data)
    index = {node.node_id: i for i, node in enumerate(graph.nodes)}
    ids = prompt_ids(tokenizer, data["metadata"]["prompt"])
    target = first_target(hf_model, tokenizer, targets, ids)
    changes, deltas = [], {}
    for node_id in config.nodes:
        node = graph.nodes[index[node_id]]
        assert node.feature is not None
        delta = (config.scale - 1.0) * node.activation
        changes.append((node.layer, node.position, node.feature, delta))
        deltas[index[node_id]] = delta
    d_model = hf_model.get_input_embeddings().weight.shape[1]
    additions = feature_additions(loaded.replacement, changes, ids.shape[1], d_model)
    before, _ = run_model_with(hf_model, ids, [target.read], {})
    after, _ = run_model_with(hf_model, ids, [target.read], additions)
    target_row = next(i for i, node in enumerate(graph.nodes) if node.kind == "logit")
    predicted = float(predicted_changes(graph, deltas)[target_row])
    record = InterventionRecord(
        graph=config.graph,
        nodes=list(config.nodes),
        scale=config.scale,
        target=target.label,
        value_before=float(before[0]),
        predicted_change=predicted,
        actual_change=float(after[0] - before[0]),
    )
    generated_before = generated_after = ""
    if config.generate:
        generated_before = tokenizer.decode(_greedy(hf_model, ids, {}, config.generate))
        generated_after = tokenizer.decode(_greedy(hf_model, ids, additions, config.generate))
    return InterveneResult(add_intervention(store, record), generated_before, generated_after)


# -- de-embeddings -------------------------------------------------------------------------------------


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
