"""`workbench export neuronpedia`: a dictionary's features in Neuronpedia's upload format.

The files are batches of at most 128 features (batch-0.json, batch-1.json, ...), each
{"modelId", "source", "features": [...]}, every feature shaped as the `neuronpedia` package's own Feature dataclass
(neuronpedia.np_feature.Feature, with its Logit, Activation and Explanation), which its client uploads with
`FeatureRequest().upload_batch(modelId, source, features)`:
- index, density (share of tokens it fires on), top_logits and bottom_logits (10 each: the tokens its decoder row
  most raises and lowers through the final norm and unembedding);
- activations: the top windows (quantile fields empty), then samples from equal-width activation intervals with
  quantileMin/quantileMax the interval's edges and quantileFraction the share of the feature's activations in it;
- explanations: every stored autointerp explanation (method "workbench-<prompt version>", explainer_model the model).
The tests validate each feature with pydantic against those dataclasses (unknown keys forbidden) and against the
limits Neuronpedia's upload route checks (apps/webapp/app/api/feature/upload-batch/route.tsx: 1-128 features, unique
indexes, <= 20 logits, 1-1024 tokens with as many values, explanation text <= 512 characters). The server also requires
the source to exist and the method and explainer names to be ones it knows; those are checked only on upload.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from workbench import features as feature_reads
from workbench.errors import EvaluationError
from workbench.hooks import parse_hook
from workbench.store import Store, lookups
from workbench.store.records import ExplanationRecord, read_all

BATCH_SIZE = 128  # Neuronpedia's upload route takes at most this many features per request
N_LOGITS = 10


@dataclass
class NeuronpediaExportConfig:
    store: str
    """The store directory."""
    dictionary: str
    """Dictionary name; it must be encoded (workbench encode)."""
    out: str
    """The folder to write (created; must be empty or absent)."""
    features: list[int] = field(default_factory=list)
    """Features to export (default: every feature that fired)."""
    model_id: str | None = None
    """Neuronpedia's model id (default: the run's model name, lower case)."""
    source: str | None = None
    """Neuronpedia's source id, "{layer}-{source set}" (default: {layer}-{dictionary name}, lower case)."""
    top_examples: int = 10
    """Top-activating windows per feature."""
    quantile_examples: int = 2
    """Windows from each of 5 activation intervals per feature."""


@dataclass
class NeuronpediaExportResult:
    folder: Path
    n_features: int
    files: list[str]
    model_id: str
    source: str


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9_.-]+", "-", text.lower()).strip("-")


def run_export_neuronpedia(config: NeuronpediaExportConfig, *, progress: bool = True) -> NeuronpediaExportResult:
    from workbench.features import DictionaryView, Unembedding
    from workbench.models import load_hf_model, resolve_model_dir

    store = Store.open_existing(config.store)
    record = lookups.completed_dictionary(store, config.dictionary)
    folder = Path(config.out)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise EvaluationError(f"--out {folder} exists and is not an empty folder; give a new one.")
    feature_reads.require_encoded(store, record, "the export's activations come from the store")
    for feature in config.features:
        feature_reads.check_feature(record, feature)
    run = lookups.run(store, record.run)
    layer = parse_hook(record.hook_out or record.hook, run.n_layers).layer
    model_id = (config.model_id or _slug(run.model)).lower()
    source = (config.source or f"{layer}-{_slug(record.name)}").lower()
    stats = {r["feature"]: r for r in feature_reads.features_table(store, record.name, limit=10**9).to_pylist()}
    chosen = list(config.features) or sorted(stats)
    with store.reader() as con:
        explanations: dict[int, list[ExplanationRecord]] = {}
        for e in read_all(con, ExplanationRecord, dictionary=record.name):
            explanations.setdefault(e.feature, []).append(e)
    hf_model, tokenizer = load_hf_model(resolve_model_dir(run.model, store.root / "models"))
    unembed = Unembedding.from_model(hf_model, tokenizer)
    view = DictionaryView(store, record)

    def feature_json(index: int) -> dict:
        top, bottom = view.logit_effects(unembed, index, n=N_LOGITS)
        density = stats[index]["density"] if index in stats else 0.0
        n_active = stats[index]["n_active"] if index in stats else 0
        common = {"modelId": model_id, "source": source, "index": index}
        activations = [
            {**common, "tokens": c.tokens, "values": c.values, "quantileMax": None, "quantileMin": None,
             "quantileFraction": None}
            for c in feature_reads.top_contexts(store, record, index, n=config.top_examples)
        ]  # fmt: skip
        for sample in feature_reads.quantile_contexts(store, record, index, 5, config.quantile_examples):
            activations += [
                {**common, "tokens": c.tokens, "values": c.values, "quantileMax": sample.high,
                 "quantileMin": sample.low, "quantileFraction": sample.n_in_interval / max(n_active, 1)}
                for c in sample.contexts
            ]  # fmt: skip
        return {
            **common,
            "density": density,
            "top_logits": [{"token": t, "value": v} for t, v in top],
            "bottom_logits": [{"token": t, "value": v} for t, v in bottom],
            "explanations": [
                {
                    **common,
                    "text": e.explanation[:512],
                    "method": f"workbench-{e.prompt_version}",
                    "explainer_model": e.explainer,
                }
                for e in explanations.get(index, [])
            ],  # fmt: skip
            "activations": activations,
        }

    staging = folder.with_name(folder.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    steps = range(0, len(chosen), BATCH_SIZE)
    if progress:
        from tqdm import tqdm

        steps = tqdm(steps, desc=f"neuronpedia export {record.name}", unit="batch")
    files = []
    with torch.no_grad():
        for batch, start in enumerate(steps):
            features = [feature_json(i) for i in chosen[start : start + BATCH_SIZE]]
            name = f"batch-{batch}.json"
            (staging / name).write_text(json.dumps({"modelId": model_id, "source": source, "features": features}))
            files.append(name)
    if folder.exists():
        folder.rmdir()
    staging.rename(folder)  # the folder appears whole or not at all
    return NeuronpediaExportResult(folder, len(chosen), files, model_id, source)
