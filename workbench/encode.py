"""Encode stored activations with a trained dictionary: sparse rows and per-feature statistics.

Writes, in one transaction, `feature_acts` (dictionary, run, token_id, feature, value) for
every non-zero latent on every non-BOS token of the dictionary's run, sorted by feature and
value, and `feature_stats` (density, max, mean and quantiles per feature). Re-encoding a
dictionary replaces its rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch
from tqdm.auto import tqdm

from workbench.corpus import is_bos_position
from workbench.devices import explain_out_of_memory, resolve_placement
from workbench.dictionaries import load_dictionary
from workbench.store import Store, lookups
from workbench.store.records import delete_rows, insert_arrow


@dataclass
class EncodeConfig:
    store: str
    """The store directory."""
    dictionary: str
    """Dictionary name (see the dictionaries table)."""
    batch_size: int = 8192
    """Tokens encoded per step."""
    device: str = "auto"
    """Where the dictionary runs: auto (cuda when available, else cpu), cpu, cuda, cuda:N or mps."""
    dtype: str = "auto"
    """Precision of the encoder's matrix product (autocast): auto (bfloat16 on cuda, float32 elsewhere), float32,
    bfloat16 or float16. Stored feature values are fp32."""


@dataclass
class EncodeResult:
    n_tokens: int
    """Tokens encoded (BOS positions left out)."""
    n_rows: int
    """Non-zero activations stored in feature_acts."""


def run_encode(config: EncodeConfig, *, progress: bool = True) -> EncodeResult:
    """Encode the dictionary's run and replace its rows in feature_acts and feature_stats."""
    placement = resolve_placement(config.device, config.dtype)
    store = Store.open_existing(config.store)
    name, batch_size = config.dictionary, config.batch_size
    record = lookups.completed_dictionary(store, name)
    run, hook = record.run, record.hook
    context_len = lookups.run(store, run).context_len
    model = load_dictionary(store.root / record.path).eval().to(placement.device)
    n_latents = model.config.n_latents

    token_chunks, feature_chunks, value_chunks = [], [], []
    n_tokens = 0
    shards = store.shards(run, hook)
    with (
        torch.no_grad(),
        placement.autocast(),
        tqdm(
            total=sum(s.n_rows for s in shards),
            unit="tok",
            unit_scale=True,
            desc=f"encode {name}",
            disable=not progress,
            dynamic_ncols=True,
        ) as bar,
    ):
        for token_ids, acts in store.iter_activations(run, hook):
            keep = ~is_bos_position(token_ids, context_len)  # BOS rows are left out, as in training
            token_ids, acts = token_ids[keep], acts[keep]
            for start in range(0, len(acts), batch_size):
                with explain_out_of_memory("Encoding", batch_size, placement.device):
                    f = model.encode(torch.from_numpy(acts[start : start + batch_size]).to(placement.device))
                rows, latents = f.nonzero(as_tuple=True)
                token_chunks.append(token_ids[start : start + batch_size][rows.cpu().numpy()])
                feature_chunks.append(latents.cpu().numpy().astype(np.int32))
                value_chunks.append(f[rows, latents].float().cpu().numpy())
            n_tokens += len(token_ids)
            bar.update(int(keep.size))

    tokens = np.concatenate(token_chunks) if token_chunks else np.zeros(0, np.int64)
    features = np.concatenate(feature_chunks) if feature_chunks else np.zeros(0, np.int32)
    values = np.concatenate(value_chunks) if value_chunks else np.zeros(0, np.float32)
    order = np.lexsort((-values, features))  # by feature, then by value descending
    tokens, features, values = tokens[order], features[order], values[order]
    acts_table = pa.table(
        {
            "dictionary": _constant(name, len(tokens)),
            "run": _constant(run, len(tokens)),
            "token_id": tokens,
            "feature": features,
            "value": values,
        }
    )
    stats = _feature_stats(name, features, values, n_latents, n_tokens)
    with store.transaction() as con:
        delete_rows(con, "feature_acts", dictionary=name)
        delete_rows(con, "feature_stats", dictionary=name)
        insert_arrow(con, "feature_acts", acts_table)
        insert_arrow(con, "feature_stats", stats)
    return EncodeResult(n_tokens=n_tokens, n_rows=len(tokens))


def _constant(text: str, n: int) -> pa.DictionaryArray:
    """A column repeating one string, stored once: a big encode has millions of rows."""
    return pa.DictionaryArray.from_arrays(np.zeros(n, dtype=np.int32), pa.array([text]))


def _feature_stats(name: str, features: np.ndarray, values: np.ndarray, n_latents: int, n_tokens: int) -> pa.Table:
    """Per-feature density, max, mean and quantiles; features are sorted, so each is one slice."""
    starts = np.searchsorted(features, np.arange(n_latents), side="left")
    ends = np.searchsorted(features, np.arange(n_latents), side="right")
    columns: dict[str, list[float | None]] = {k: [] for k in ("n_active", "max", "mean", "q50", "q90", "q99")}
    for start, end in zip(starts, ends):
        active = values[start:end]
        columns["n_active"].append(int(end - start))
        if len(active):
            columns["max"].append(float(active.max()))
            columns["mean"].append(float(active.mean()))
            q50, q90, q99 = np.quantile(active, [0.5, 0.9, 0.99])
            columns["q50"].append(float(q50))
            columns["q90"].append(float(q90))
            columns["q99"].append(float(q99))
        else:
            for key in ("max", "mean", "q50", "q90", "q99"):
                columns[key].append(None)
    n_active = np.array(columns["n_active"], dtype=np.int64)
    return pa.table(
        {
            "dictionary": _constant(name, n_latents),
            "feature": pa.array(np.arange(n_latents, dtype=np.int32)),
            "n_active": n_active,
            "density": n_active / max(n_tokens, 1),
            "max": pa.array(columns["max"], pa.float64()),
            "mean": pa.array(columns["mean"], pa.float64()),
            "q50": pa.array(columns["q50"], pa.float64()),
            "q90": pa.array(columns["q90"], pa.float64()),
            "q99": pa.array(columns["q99"], pa.float64()),
        }
    )
