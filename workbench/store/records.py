"""One typed record per catalog entity, and the only functions that read or write them.

Each record mirrors its table's columns (schema.py) field for field, so an added column is
one added field here and nothing else changes: every write names its columns, taken from
the dataclass, never a positional `VALUES (?, ?, ...)` list.

    insert(con, record)                     write one row
    read_one(con, RecordType, **key)        one row by its key, or None
    read_all(con, RecordType, ...)          rows, optionally filtered and ordered
    update(con, RecordType, key, **changes) change named columns (and updated_at)
    delete(con, RecordType, **key)          remove rows by key
    scalar(con, sql, params)                the one value of a query that must return a row (count(*), ...)

Result tables that are not entities (probe measurements, patching scores, sparse feature
activations) are written by `insert_rows` and `insert_arrow`, which name their columns too.
The questions the rest of the code asks of these records live in lookups.py.

JSON columns hold Python dicts here (serialised on write, parsed on read); timestamps left
as None are set by the catalog to now().
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any, ClassVar, TypeVar

import duckdb
import pyarrow as pa

from workbench.errors import StoreError

_TIMESTAMPS = ("created_at", "updated_at")


def _json(default: Any = None) -> Any:
    """A JSON column: a dict (or list) in Python, a JSON string in the catalog."""
    return field(default=default, metadata={"json": True})


class Record:
    """Base of the catalog records: TABLE names the table and KEY its primary-key columns."""

    TABLE: ClassVar[str]
    KEY: ClassVar[tuple[str, ...]]
    # Every record type is a dataclass; declared here so `fields()` type-checks on Record and its TypeVar.
    __dataclass_fields__: ClassVar[dict[str, Any]]


R = TypeVar("R", bound=Record)


@dataclass(frozen=True)
class RunRecord(Record):
    """A harvest run: one model over one corpus slice, at some hook points (table `runs`)."""

    TABLE: ClassVar[str] = "runs"
    KEY: ClassVar[tuple[str, ...]] = ("run",)
    run: str
    model: str  # registry name, local folder or hub id, as the user gave it
    model_dir: str | None  # the HF folder that was loaded
    backend: str
    hooks: list[str]  # canonical names, forward order
    corpus: str
    text_column: str | None
    context_len: int
    tokens_requested: int
    n_contexts: int
    n_tokens: int
    chunk_contexts: int  # contexts per shard: the unit of commit and resume
    n_layers: int
    d_model: int
    config: dict | None = _json()  # every harvest argument, verbatim
    package_version: str | None = None
    git_commit: str | None = None
    status: str = "running"  # running | complete
    created_at: datetime | None = None
    updated_at: datetime | None = None
    device: str | None = None  # compute device used (cpu, cuda:0, mps); NULL before schema v6
    dtype: str | None = None  # compute precision used (float32, bfloat16, float16)


@dataclass(frozen=True)
class HookPointRecord(Record):
    """A hook point harvested by a run (table `hook_points`)."""

    TABLE: ClassVar[str] = "hook_points"
    KEY: ClassVar[tuple[str, ...]] = ("run", "hook")
    run: str
    hook: str
    layer: int
    kind: str
    d: int
    dtype: str = "float32"


@dataclass(frozen=True)
class FeaturePartRecord(Record):
    """One committed Parquet file of a dictionary's feature activations (table `feature_parts`): the rows of
    features bucket * bucket_width ... (bucket + 1) * bucket_width - 1, sorted by (feature, value DESC)."""

    TABLE: ClassVar[str] = "feature_parts"
    KEY: ClassVar[tuple[str, ...]] = ("dictionary", "bucket")
    dictionary: str
    run: str
    bucket: int
    bucket_width: int
    path: str
    n_rows: int
    n_bytes: int
    sha256: str
    created_at: datetime | None = None


@dataclass(frozen=True)
class ShardRecord(Record):
    """One committed Parquet shard of activations (table `shards`); path is relative to the store."""

    TABLE: ClassVar[str] = "shards"
    KEY: ClassVar[tuple[str, ...]] = ("run", "hook", "chunk")
    run: str
    hook: str
    chunk: int
    path: str
    first_token: int
    n_rows: int
    n_bytes: int
    sha256: str
    created_at: datetime | None = None


@dataclass(frozen=True)
class DictionaryRecord(Record):
    """A sparse dictionary, training or complete (table `dictionaries`); files under `path`, relative to the store."""

    TABLE: ClassVar[str] = "dictionaries"
    KEY: ClassVar[tuple[str, ...]] = ("name",)
    name: str
    arch: str
    run: str
    hook: str
    hook_out: str | None  # transcoders: the hook they predict
    d_in: int
    d_out: int
    n_latents: int
    k: int
    path: str
    status: str = "training"  # training | complete
    steps_done: int = 0
    tokens_done: int = 0
    train_fvu: float | None = None
    train_l0: float | None = None
    dead_fraction: float | None = None
    dead_window_tokens: int | None = None
    config: dict | None = _json()
    package_version: str | None = None
    git_commit: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    device: str | None = None  # compute device used (cpu, cuda:0, mps); NULL before schema v6
    dtype: str | None = None  # compute precision used (float32, bfloat16, float16)


@dataclass(frozen=True)
class DictionaryEvalRecord(Record):
    """`workbench eval`'s metrics for a dictionary on one run (table `dictionary_evals`)."""

    TABLE: ClassVar[str] = "dictionary_evals"
    KEY: ClassVar[tuple[str, ...]] = ("dictionary", "eval_run")
    dictionary: str
    eval_run: str
    backend: str
    n_tokens: int
    fvu: float | None = None
    l0: float | None = None
    dead_fraction: float | None = None
    n_ce_tokens: int | None = None
    ce_clean: float | None = None
    ce_spliced: float | None = None
    ce_zero_ablation: float | None = None
    ce_loss_score: float | None = None
    delta_ce: float | None = None
    kl: float | None = None
    created_at: datetime | None = None
    device: str | None = None  # compute device used (cpu, cuda:0, mps); NULL before schema v6
    dtype: str | None = None  # compute precision used (float32, bfloat16, float16)


@dataclass(frozen=True)
class ProbeRunRecord(Record):
    """A depth-usage probe run; its measurements are in the probe_* tables (table `probe_runs`)."""

    TABLE: ClassVar[str] = "probe_runs"
    KEY: ClassVar[tuple[str, ...]] = ("probe_run",)
    probe_run: str
    kind: str  # depth | linear_maps
    model: str
    target_model: str | None
    backend: str
    corpus: str
    task: str
    n_layers: int
    n_tokens: int
    config: dict | None = _json()
    package_version: str | None = None
    git_commit: str | None = None
    created_at: datetime | None = None
    device: str | None = None  # compute device used (cpu, cuda:0, mps); NULL before schema v6
    dtype: str | None = None  # compute precision used (float32, bfloat16, float16)


@dataclass(frozen=True)
class CircuitRunRecord(Record):
    """A patching or discrete-code circuit analysis (table `circuit_runs`)."""

    TABLE: ClassVar[str] = "circuit_runs"
    KEY: ClassVar[tuple[str, ...]] = ("circuit_run",)
    circuit_run: str
    method: str  # patching | codes
    task: str
    model: str
    backend: str
    metric: str
    n_pairs: int
    seq_len: int
    metric_clean: float | None = None
    metric_corrupted: float | None = None
    prompts: dict | None = _json()
    wall_s: float | None = None
    reference_run: str | None = None
    roc_auc_heads: float | None = None
    roc_auc_pairs: float | None = None
    config: dict | None = _json()
    package_version: str | None = None
    git_commit: str | None = None
    created_at: datetime | None = None
    device: str | None = None  # compute device used (cpu, cuda:0, mps); NULL before schema v6
    dtype: str | None = None  # compute precision used (float32, bfloat16, float16)


@dataclass(frozen=True)
class GraphRecord(Record):
    """An attribution graph; its pruned JSON is at `path`, relative to the store (table `circuit_graphs`)."""

    TABLE: ClassVar[str] = "circuit_graphs"
    KEY: ClassVar[tuple[str, ...]] = ("graph",)
    graph: str
    model: str
    prompt: str
    target_token: str | None
    target_logit: float | None
    transcoders: list[str]
    n_nodes: int | None
    n_edges: int | None
    n_kept_nodes: int | None
    n_kept_edges: int | None
    replacement_score: float | None
    completeness_score: float | None
    node_threshold: float | None
    edge_threshold: float | None
    path: str
    wall_s: float | None = None
    package_version: str | None = None
    git_commit: str | None = None
    created_at: datetime | None = None
    device: str | None = None  # compute device used (cpu, cuda:0, mps); NULL before schema v6
    dtype: str | None = None  # compute precision used (float32, bfloat16, float16)
    faithfulness: float | None = None  # correlation of predicted with actual ablation effects; NULL before v8
    n_targets: int | None = None  # logits or custom targets explained; NULL before v8


@dataclass(frozen=True)
class InterventionRecord(Record):
    """One intervention on an attribution graph's features, predicted against actual (table `circuit_interventions`)."""

    TABLE: ClassVar[str] = "circuit_interventions"
    KEY: ClassVar[tuple[str, ...]] = ("graph", "created_at")
    graph: str
    nodes: list[str]
    scale: float
    target: str
    value_before: float
    predicted_change: float
    actual_change: float
    created_at: datetime | None = None


@dataclass(frozen=True)
class ScoreRecord(Record):
    """One number of an evaluation benchmark for a dictionary (table `dictionary_scores`)."""

    TABLE: ClassVar[str] = "dictionary_scores"
    KEY: ClassVar[tuple[str, ...]] = ("dictionary", "benchmark", "task", "metric")
    dictionary: str
    benchmark: str  # absorption | sparse_probing | autointerp | steering
    task: str  # "" for the benchmark's summary
    metric: str
    value: float | None
    n: int | None = None  # examples behind the value
    config: dict | None = _json()
    created_at: datetime | None = None


@dataclass(frozen=True)
class ExplanationRecord(Record):
    """A feature's explanation and its scores (table `feature_explanations`)."""

    TABLE: ClassVar[str] = "feature_explanations"
    KEY: ClassVar[tuple[str, ...]] = ("dictionary", "feature", "explainer", "prompt_version")
    dictionary: str
    feature: int
    explanation: str
    explainer: str
    prompt_version: str
    scorer: str | None = None
    detection: float | None = None  # balanced accuracy on held-out contexts
    fuzzing: float | None = None
    detection_random: float | None = None  # a random explanation, scored the same way
    fuzzing_random: float | None = None
    detection_auc: float | None = None  # ROC AUC of the scorer's P("1"), threshold-free
    fuzzing_auc: float | None = None
    detection_auc_random: float | None = None
    fuzzing_auc_random: float | None = None
    n_scored: int | None = None
    created_at: datetime | None = None


@dataclass(frozen=True)
class CodebookRecord(Record):
    """Codebook bottlenecks fine-tuned into a model, training or complete (table `codebooks`)."""

    TABLE: ClassVar[str] = "codebooks"
    KEY: ClassVar[tuple[str, ...]] = ("name",)
    name: str
    model: str
    model_fingerprint: str
    sites: list[str]
    n_codes: int
    k: int
    reduce: str
    path: str
    status: str = "training"
    steps_done: int = 0
    tokens_done: int = 0
    lm_loss_original: float | None = None
    lm_loss_codebooks: float | None = None
    lm_loss_increase: float | None = None
    lm_loss_bypassed: float | None = None
    recon_error: float | None = None
    config: dict | None = _json()
    package_version: str | None = None
    git_commit: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    device: str | None = None  # compute device used (cpu, cuda:0, mps); NULL before schema v6
    dtype: str | None = None  # compute precision used (float32, bfloat16, float16)


# -- reading and writing ---------------------------------------------------------------------------


def _to_catalog(f, value: Any) -> Any:
    return json.dumps(value) if f.metadata.get("json") and value is not None else value


def _from_catalog(cls: type[R], row: Sequence[Any]) -> R:
    values = {}
    for f, value in zip(fields(cls), row):
        if f.metadata.get("json") and isinstance(value, str):
            value = json.loads(value)
        values[f.name] = value
    return cls(**values)


def _where(key: dict[str, Any]) -> tuple[str, list[Any]]:
    if not key:
        return "true", []
    return " AND ".join(f"{column} = ?" for column in key), list(key.values())


def insert(con: duckdb.DuckDBPyConnection, record: Record) -> None:
    """Write one record as a new row; timestamps left as None become now()."""
    columns, marks, values = [], [], []
    for f in fields(record):
        value = getattr(record, f.name)
        columns.append(f.name)
        if value is None and f.name in _TIMESTAMPS:
            marks.append("now()")
        else:
            marks.append("?")
            values.append(_to_catalog(f, value))
    con.execute(f"INSERT INTO {record.TABLE} ({', '.join(columns)}) VALUES ({', '.join(marks)})", values)


def read_all(con: duckdb.DuckDBPyConnection, cls: type[R], where: str = "true", params: Sequence[Any] = (),
             order_by: str | None = None, **key: Any) -> list[R]:
    """Rows of cls's table as records, in key order unless `order_by` says otherwise.

    Filters: `key` columns equal to values (read_all(con, ShardRecord, run="demo")), and/or `where`, a SQL
    condition on the table's columns with ? placeholders filled from `params`.
    """
    columns = ", ".join(f.name for f in fields(cls))
    key_where, key_params = _where(key)
    order = order_by or ", ".join(cls.KEY)
    query = f"SELECT {columns} FROM {cls.TABLE} WHERE ({where}) AND {key_where} ORDER BY {order}"
    return [_from_catalog(cls, row) for row in con.execute(query, list(params) + key_params).fetchall()]


def read_one(con: duckdb.DuckDBPyConnection, cls: type[R], **key: Any) -> R | None:
    """The record with this key (e.g. read_one(con, RunRecord, run="demo")), or None."""
    found = read_all(con, cls, **key)
    return found[0] if found else None


def scalar(con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any] = ()) -> Any:
    """The first column of the query's first row; a StoreError if there is no row (count(*) always has one)."""
    row = con.execute(sql, list(params)).fetchone()
    if row is None:
        raise StoreError(f"The catalog has no row for {sql!r} with {list(params)}.")
    return row[0]


def update(con: duckdb.DuckDBPyConnection, cls: type[Record], key: dict[str, Any], **changes: Any) -> None:
    """Set the named columns of the keyed row(s); updated_at follows, where the table has it."""
    by_name = {f.name: f for f in fields(cls)}
    unknown = set(changes) - set(by_name)
    if unknown:
        raise ValueError(f"{cls.__name__} has no column(s) {sorted(unknown)}")
    sets = [f"{column} = ?" for column in changes]
    values = [_to_catalog(by_name[column], value) for column, value in changes.items()]
    if "updated_at" in by_name and "updated_at" not in changes:
        sets.append("updated_at = now()")
    where, params = _where(key)
    con.execute(f"UPDATE {cls.TABLE} SET {', '.join(sets)} WHERE {where}", values + params)


def delete(con: duckdb.DuckDBPyConnection, cls: type[Record], **key: Any) -> None:
    where, params = _where(key)
    con.execute(f"DELETE FROM {cls.TABLE} WHERE {where}", params)


def insert_rows(con: duckdb.DuckDBPyConnection, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Append rows of a result table (not an entity), naming the columns they fill."""
    rows = list(rows)
    if rows:
        marks = ", ".join("?" for _ in columns)
        con.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", rows)


def insert_arrow(con: duckdb.DuckDBPyConnection, table: str, data: pa.Table) -> None:
    """Append an Arrow table to a result table, its columns matched by name (bulk writes: tokens, feature_acts)."""
    con.register("_incoming", data)
    try:
        columns = ", ".join(data.column_names)
        con.execute(f"INSERT INTO {table} ({columns}) SELECT {columns} FROM _incoming")
    finally:
        con.unregister("_incoming")


def delete_rows(con: duckdb.DuckDBPyConnection, table: str, **key: Any) -> None:
    """Remove a result table's rows for an entity (e.g. delete_rows(con, "feature_acts", dictionary=name))."""
    where, params = _where(key)
    con.execute(f"DELETE FROM {table} WHERE {where}", params)
