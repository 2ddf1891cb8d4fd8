"""The store's own commands as entry points: `workbench store info|verify|upgrade` and `workbench sql`.

Each is run_<thing>(Config) -> Result, like every other command (docs/ARCHITECTURE.md); the work itself
is in maintenance.py (summary, checksums, repair) and sql.py (the read-only guard).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

from workbench.store.catalog import Store
from workbench.store.features import drop_encoding
from workbench.store.maintenance import (
    FeaturePartProblem,
    ShardProblem,
    drop_chunks,
    summarize,
    upgrade,
    verify,
    verify_feature_parts,
)
from workbench.store.sql import QueryResult, run_query


@dataclass
class StoreInfoConfig:
    store: str
    """The store directory."""


@dataclass
class StoreSummary:
    root: str
    schema_version: int
    catalog_bytes: int
    shard_bytes: int
    model_bytes: int
    runs: pa.Table
    hook_points: pa.Table  # with bytes per token as stored, against raw fp32
    probe_runs: pa.Table
    dictionaries: pa.Table  # with their latest eval
    codebooks: pa.Table


def run_store_info(config: StoreInfoConfig) -> StoreSummary:
    return StoreSummary(**summarize(Store.open_existing(config.store)))  # type: ignore[arg-type]


@dataclass
class VerifyConfig:
    store: str
    """The store directory."""
    run: str | None = None
    """Only this run (default: every run)."""
    drop_corrupt: bool = False
    """Unregister damaged chunks, so that re-running the harvest command regenerates them (and the encodings with
    a damaged feature part, so that re-running `workbench encode` writes them again)."""


@dataclass
class VerifyResult:
    checked: int
    problems: list[ShardProblem]
    dropped_chunks: int  # unregistered with drop_corrupt
    parts_checked: int = 0  # feature parts (large encodes' Parquet files)
    part_problems: list[FeaturePartProblem] = field(default_factory=list)


def run_verify(config: VerifyConfig) -> VerifyResult:
    store = Store.open_existing(config.store)
    checked, problems = verify(store, config.run)
    parts_checked, part_problems = verify_feature_parts(store, config.run)
    dropped = drop_chunks(store, problems) if problems and config.drop_corrupt else 0
    if config.drop_corrupt:
        for dictionary in sorted({p.dictionary for p in part_problems}):
            drop_encoding(store, dictionary)
    return VerifyResult(checked, problems, dropped, parts_checked, part_problems)


@dataclass
class UpgradeConfig:
    store: str
    """The store directory."""


@dataclass
class UpgradeResult:
    old_version: int | None
    new_version: int


def run_upgrade(config: UpgradeConfig) -> UpgradeResult:
    return UpgradeResult(*upgrade(Store(config.store)))


@dataclass
class SqlConfig:
    store: str
    """The store directory."""
    query: str
    """One read-only statement (SELECT, SHOW, DESCRIBE, SUMMARIZE, EXPLAIN)."""
    max_rows: int = 1000
    """Cut the result after this many rows."""
    timeout: float = 60
    """Interrupt the query after this many seconds."""


def run_sql(config: SqlConfig) -> QueryResult:
    return run_query(Store.open_existing(config.store), config.query, max_rows=config.max_rows,
                     timeout_s=config.timeout)
