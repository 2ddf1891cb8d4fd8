"""Encode stored activations with a trained dictionary: sparse rows and per-feature statistics.

Every non-zero latent on every non-BOS token of the dictionary's run becomes a row (dictionary, run,
token_id, feature, value), sorted by feature and value; `feature_stats` gets density, max, mean and
quantiles per feature. Re-encoding a dictionary replaces all of it, in one transaction. The rows go to
one of two places (`--feature-store`):
- `table`: the catalog's `feature_rows` table, built in memory: right for small runs;
- `parquet`: one file per bucket of `bucket_width` consecutive features under features/dictionary=<name>/,
  registered in `feature_parts`, so a feature page reads one file and the catalog stays small. Built in two
  passes that never hold the run in memory: map (groups of shards -> sorted runs in a staging folder), then
  merge (one bucket at a time), locally or on a Ray cluster's actors (--ray), the driver alone committing.
`auto` switches to parquet from PARQUET_FROM_ROWS expected rows (bench/feature_acts.py measured where).
The `feature_acts` view reads both places.
"""

from __future__ import annotations

import math
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm

from workbench.corpus import is_bos_position
from workbench.devices import explain_out_of_memory, resolve_placement
from workbench.dictionaries import load_dictionary
from workbench.errors import StoreError, WorkbenchError
from workbench.store import Store, lookups
from workbench.store.features import feature_part_path, remove_unregistered_feature_files, replace_encoding
from workbench.store.records import FeaturePartRecord, ShardRecord
from workbench.store.shards import file_sha256, read_shard, sync_files

FEATURE_STORES = ("auto", "table", "parquet")
PARQUET_FROM_ROWS = 50_000_000  # auto: expected rows (tokens x k) from which parquet is used; see bench/feature_acts.py
SHARDS_PER_MAP_TASK = 8  # shards encoded into one sorted run (8 x 8,192 tokens x k 32 = 2M rows)
ROW_GROUP_ROWS = 65_536  # rows per Parquet row group: what a one-feature query reads at least


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
    feature_store: str = "auto"
    """Where the rows go: table (the catalog), parquet (one file per bucket of features under <store>/features/,
    for runs too big for one table), or auto (parquet from 50M expected rows, tokens x k)."""
    bucket_width: int = 256
    """parquet: consecutive features per file; a feature page reads one file."""
    ray: str | None = None
    """Encode on a Ray cluster (implies parquet): its address, or 'local' (what --ray alone means) to start one
    here. Actors hold the dictionary and write files; this process alone commits."""
    workers: int | None = None
    """With --ray: how many actors (default: one per GPU of the cluster, else one per node)."""

    def __post_init__(self) -> None:
        if self.feature_store not in FEATURE_STORES:
            raise WorkbenchError(f"Unknown --feature-store '{self.feature_store}'; use {', '.join(FEATURE_STORES)}.")
        if self.ray is not None and self.feature_store == "table":
            raise WorkbenchError("--ray writes Parquet files; give --feature-store parquet (or auto) with it.")
        if self.bucket_width < 1 or self.batch_size < 1:
            raise WorkbenchError("--bucket-width and --batch-size must be positive.")


@dataclass
class EncodeResult:
    n_tokens: int
    """Tokens encoded (BOS positions left out)."""
    n_rows: int
    """Non-zero activations stored."""
    feature_store: str = "table"
    """Where they went: table or parquet."""
    n_files: int = 0
    """parquet: bucket files written."""


class FeatureEncoder:
    """Encodes shards and merges the results: the work of a local encode, and of each Ray actor (cluster.py)."""

    def __init__(self, root: str, dictionary_path: str, context_len: int, device: str, dtype: str, batch_size: int):
        self.placement = resolve_placement(device, dtype)
        self.root, self.context_len, self.batch_size = Path(root), context_len, batch_size
        self.model = load_dictionary(self.root / dictionary_path).eval().to(self.placement.device)

    def ready(self) -> str:
        return self.placement.describe()

    def encode(self, shards: list[ShardRecord], out: str | None = None, progress=None):
        """Encode shards; with `out`, write the rows sorted by (feature, value desc) there and return
        (tokens, rows); without, return (tokens, token_ids, features, values)."""
        token_chunks, feature_chunks, value_chunks = [], [], []
        n_tokens = 0
        with torch.no_grad(), self.placement.autocast():
            for shard in shards:
                token_ids, acts = read_shard(self.root / shard.path, shard.sha256, shard.n_rows)
                keep = ~is_bos_position(token_ids, self.context_len)  # BOS rows are left out, as in training
                token_ids, acts = token_ids[keep], acts[keep].astype(np.float32, copy=False)
                for start in range(0, len(acts), self.batch_size):
                    with explain_out_of_memory("Encoding", self.batch_size, self.placement.device):
                        x = torch.from_numpy(acts[start : start + self.batch_size]).to(self.placement.device)
                        f = self.model.encode(x)
                    rows, latents = f.nonzero(as_tuple=True)
                    token_chunks.append(token_ids[start : start + self.batch_size][rows.cpu().numpy()])
                    feature_chunks.append(latents.cpu().numpy().astype(np.int32))
                    value_chunks.append(f[rows, latents].float().cpu().numpy())
                n_tokens += len(token_ids)
                if progress is not None:
                    progress(int(keep.size))
        tokens, features, values = _sorted(
            np.concatenate(token_chunks) if token_chunks else np.zeros(0, np.int64),
            np.concatenate(feature_chunks) if feature_chunks else np.zeros(0, np.int32),
            np.concatenate(value_chunks) if value_chunks else np.zeros(0, np.float32),
        )
        if out is None:
            return n_tokens, tokens, features, values
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"token_id": tokens, "feature": features, "value": values}), out,
                       row_group_size=ROW_GROUP_ROWS)  # fmt: skip
        return n_tokens, len(tokens)

    def merge(self, staged: list[str], dictionary: str, run: str, bucket: int, width: int, n_tokens: int, out: str):
        """One bucket's rows from every staged run (row groups outside it are skipped by their statistics), sorted,
        written to `out` and synced. Returns (its FeaturePartRecord fields, or None if the bucket is empty; the
        bucket's feature_stats rows)."""
        lo, hi = bucket * width, min((bucket + 1) * width, self.model.config.n_latents)
        field = ds.field("feature")
        table = ds.dataset(staged, format="parquet").to_table(filter=(field >= lo) & (field < hi))
        tokens, features, values = _sorted(
            table["token_id"].to_numpy(), table["feature"].to_numpy(), table["value"].to_numpy()
        )
        stats = feature_stats_table(dictionary, features, values, np.arange(lo, hi, dtype=np.int32), n_tokens)
        if not len(tokens):
            return None, stats
        rows = rows_table(dictionary, run, tokens, features, values)
        pq.write_table(rows, out, row_group_size=ROW_GROUP_ROWS)
        sync_files([Path(out)])
        path = Path(out).relative_to(self.root).as_posix()
        part = dict(dictionary=dictionary, run=run, bucket=bucket, bucket_width=width, path=path, n_rows=len(tokens),
                    n_bytes=Path(out).stat().st_size, sha256=file_sha256(Path(out)))  # fmt: skip
        return part, stats


def _sorted(tokens: np.ndarray, features: np.ndarray, values: np.ndarray):
    order = np.lexsort((-values, features))  # by feature, then by value descending
    return tokens[order], features[order], values[order]


def rows_table(dictionary: str, run: str, tokens, features, values) -> pa.Table:
    return pa.table(
        {
            "dictionary": _constant(dictionary, len(tokens)),
            "run": _constant(run, len(tokens)),
            "token_id": tokens,
            "feature": features,
            "value": values,
        }
    )


def run_encode(config: EncodeConfig, *, progress: bool = True) -> EncodeResult:
    """Encode the dictionary's run and replace its feature activations and feature_stats."""
    pool = None
    if config.ray is not None:
        from workbench.cluster import connect

        pool = connect(config.ray, config.workers, config.store)
        placement = pool.placement(config.device, config.dtype)
    else:
        placement = resolve_placement(config.device, config.dtype)
    store = Store.open_existing(config.store)
    record = lookups.completed_dictionary(store, config.dictionary)
    context_len = lookups.run(store, record.run).context_len
    shards = store.shards(record.run, record.hook)
    if not shards:
        raise StoreError(f"No committed activations for run '{record.run}' at hook '{record.hook}'. Harvest it first.")
    remove_unregistered_feature_files(store, record.name)  # left by a killed parquet encode
    expected_rows = sum(s.n_rows for s in shards) * record.k
    where = config.feature_store
    if where == "auto":
        where = "parquet" if pool is not None or expected_rows >= PARQUET_FROM_ROWS else "table"
    bar = tqdm(
        total=sum(s.n_rows for s in shards),
        unit="tok",
        unit_scale=True,
        desc=f"encode {config.dictionary}",
        disable=not progress,
        dynamic_ncols=True,
    )
    args = (str(store.root), record.path, context_len, placement.device_name, placement.dtype_name, config.batch_size)
    with bar:
        if where == "table":
            n_tokens, tokens, features, values = FeatureEncoder(*args).encode(shards, progress=bar.update)
            stats = feature_stats_table(
                record.name, features, values, np.arange(record.n_latents, dtype=np.int32), n_tokens
            )
            replace_encoding(store, record.name, stats, rows=rows_table(record.name, record.run, tokens, features,
                                                                          values))  # fmt: skip
            return EncodeResult(n_tokens, len(tokens))
        return _encode_to_parts(store, record, shards, args, config, pool, bar)


def _encode_to_parts(store: Store, record, shards, args, config: EncodeConfig, pool, bar) -> EncodeResult:
    """Map (groups of shards -> sorted staged runs), merge (one file per bucket), commit; on actors with a pool."""
    generation = uuid.uuid4().hex[:8]  # new file names, so the committed files stay intact until the commit
    staging = store.root / "features" / f"dictionary={record.name}" / f".staging-{generation}"
    groups = [shards[i : i + SHARDS_PER_MAP_TASK] for i in range(0, len(shards), SHARDS_PER_MAP_TASK)]
    staged = [str(staging / f"run-{i:06d}.parquet") for i in range(len(groups))]
    n_buckets = math.ceil(record.n_latents / config.bucket_width)
    try:
        if pool is None:
            encoder = FeatureEncoder(*args)
            mapped = [encoder.encode(group, out, progress=bar.update) for group, out in zip(groups, staged)]
            n_tokens = sum(m[0] for m in mapped)
            merged = [
                encoder.merge(staged, record.name, record.run, b, config.bucket_width, n_tokens,
                              str(store.root / feature_part_path(record.name, b, generation)))
                for b in range(n_buckets)
            ]  # fmt: skip
        else:
            from workbench.cluster_encode import encode_on_pool

            n_tokens, merged = encode_on_pool(pool, args, groups, staged, record, config, generation, store, bar)
        parts = [FeaturePartRecord(**part) for part, _ in merged if part is not None]
        stats = pa.concat_tables([table for _, table in merged])
        replace_encoding(store, record.name, stats, parts=parts)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return EncodeResult(n_tokens, sum(p.n_rows for p in parts), "parquet", len(parts))


def _constant(text: str, n: int) -> pa.DictionaryArray:
    """A column repeating one string, stored once: a big encode has millions of rows."""
    return pa.DictionaryArray.from_arrays(np.zeros(n, dtype=np.int32), pa.array([text]))


def feature_stats_table(
    name: str, features: np.ndarray, values: np.ndarray, feature_ids: np.ndarray, n_tokens: int
) -> pa.Table:
    """Density, max, mean and quantiles of each of `feature_ids`; `features` is sorted, so each is one slice."""
    starts = np.searchsorted(features, feature_ids, side="left")
    ends = np.searchsorted(features, feature_ids, side="right")
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
            "dictionary": pa.array([name] * len(feature_ids)),
            "feature": pa.array(feature_ids.astype(np.int32)),
            "n_active": n_active,
            "density": n_active / max(n_tokens, 1),
            "max": pa.array(columns["max"], pa.float64()),
            "mean": pa.array(columns["mean"], pa.float64()),
            "q50": pa.array(columns["q50"], pa.float64()),
            "q90": pa.array(columns["q90"], pa.float64()),
            "q99": pa.array(columns["q99"], pa.float64()),
        }
    )
