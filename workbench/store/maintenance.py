"""Looking after a store: a summary of what it holds, checksum verification, and repair."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from workbench.store.catalog import Store
from workbench.store.records import FeaturePartRecord, RunRecord, ShardRecord, delete, read_all, update
from workbench.store.schema import SCHEMA_VERSION, read_version, rebuild_activation_view
from workbench.store.shards import file_sha256


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def summarize(store: Store) -> dict[str, pa.Table | int | str]:
    """Runs, hook points (with bytes per token against raw fp32) and sizes, as Arrow tables."""
    with store.reader() as con:
        runs = con.sql("""
            WITH stored AS (SELECT run, sum(n_rows)::BIGINT AS rows FROM shards GROUP BY run)
            SELECT r.run, r.model, r.backend, r.status,
                   coalesce(s.rows, 0) // len(r.hooks) AS tokens_done, r.n_tokens AS tokens_total,
                   array_to_string(r.hooks, ',') AS hooks, r.corpus, r.git_commit,
                   strftime(r.created_at, '%Y-%m-%d %H:%M') AS created
            FROM runs r LEFT JOIN stored s USING (run)
            ORDER BY r.created_at""").to_arrow_table()
        hooks = con.sql("""
            WITH stored AS (
                SELECT run, hook, sum(n_rows)::BIGINT AS tokens, count(*) AS shards, sum(n_bytes)::BIGINT AS bytes
                FROM shards GROUP BY run, hook)
            SELECT h.run, h.hook, h.d, coalesce(s.tokens, 0) AS tokens, coalesce(s.shards, 0) AS shards,
                   coalesce(s.bytes, 0) AS bytes,
                   round(s.bytes / s.tokens, 1) AS bytes_per_token,
                   h.d * 4 AS raw_fp32_bytes_per_token,
                   round(s.bytes / s.tokens / (h.d * 4), 3) AS ratio_to_fp32
            FROM hook_points h LEFT JOIN stored s USING (run, hook)
            ORDER BY h.run, h.layer, h.hook""").to_arrow_table()
        probes = con.sql("""
            SELECT probe_run, kind, model, coalesce(target_model, '') AS target_model, backend, task, n_tokens,
                   strftime(created_at, '%Y-%m-%d %H:%M') AS created
            FROM probe_runs ORDER BY created_at""").to_arrow_table()
        dictionaries = con.sql("""
            WITH latest AS (SELECT * FROM dictionary_evals QUALIFY row_number() OVER (PARTITION BY dictionary ORDER BY created_at DESC) = 1)
            SELECT d.name, d.arch, d.hook, coalesce(d.hook_out, '') AS hook_out, d.n_latents, d.k, d.status,
                   round(e.fvu, 4) AS fvu, round(e.l0, 1) AS l0, round(100 * e.dead_fraction, 1) AS dead_pct,
                   round(e.ce_loss_score, 4) AS ce_loss_score, round(e.kl, 4) AS kl, coalesce(e.eval_run, '') AS eval_run
            FROM dictionaries d LEFT JOIN latest e ON e.dictionary = d.name ORDER BY d.created_at""").to_arrow_table()
        codebooks = con.sql("""
            SELECT name, model, array_to_string(sites, ', ') AS sites, n_codes, k, status,
                   round(lm_loss_original, 4) AS lm_loss_original, round(lm_loss_codebooks, 4) AS lm_loss_codebooks,
                   round(lm_loss_bypassed, 4) AS lm_loss_bypassed,
                   (SELECT count(DISTINCT run) FROM codebook_codes c WHERE c.codebook = b.name) AS encoded_runs
            FROM codebooks b ORDER BY created_at""").to_arrow_table()
        version = read_version(con)
    return {
        "root": str(store.root),
        "schema_version": version,
        "runs": runs,
        "hook_points": hooks,
        "probe_runs": probes,
        "dictionaries": dictionaries,
        "codebooks": codebooks,
        "catalog_bytes": store.catalog_path.stat().st_size,
        "shard_bytes": _dir_bytes(store.root / "shards"),
        "model_bytes": _dir_bytes(store.root / "models"),
    }


@dataclass
class ShardProblem:
    run: str
    hook: str
    chunk: int
    path: str
    problem: str


def verify(store: Store, run: str | None = None) -> tuple[int, list[ShardProblem]]:
    """Check every committed shard's file against its SHA-256 and row count. Returns (checked, problems)."""
    problems = []
    records = store.shards(run)
    for record in records:
        path = store.root / record.path
        if not path.exists():
            problems.append(ShardProblem(record.run, record.hook, record.chunk, record.path, "missing"))
            continue
        if file_sha256(path) != record.sha256:
            problems.append(ShardProblem(record.run, record.hook, record.chunk, record.path, "checksum mismatch"))
            continue
        rows = pq.ParquetFile(path).metadata.num_rows
        if rows != record.n_rows:
            problems.append(ShardProblem(record.run, record.hook, record.chunk, record.path, f"{rows} rows, expected {record.n_rows}"))
    return len(records), problems


@dataclass(frozen=True)
class FeaturePartProblem:
    dictionary: str
    bucket: int
    path: str
    problem: str


def verify_feature_parts(store: Store, run: str | None = None) -> tuple[int, list[FeaturePartProblem]]:
    """Check every committed feature part (large encodes' Parquet files) against its SHA-256 and row count."""
    with store.reader() as con:
        parts = read_all(con, FeaturePartRecord, **({"run": run} if run else {}))
    problems = []
    for part in parts:
        path = store.root / part.path
        if not path.exists():
            problem = "missing"
        elif file_sha256(path) != part.sha256:
            problem = "checksum mismatch"
        elif (rows := pq.ParquetFile(path).metadata.num_rows) != part.n_rows:
            problem = f"{rows} rows, expected {part.n_rows}"
        else:
            continue
        problems.append(FeaturePartProblem(part.dictionary, part.bucket, part.path, problem))
    return len(parts), problems


def drop_chunks(store: Store, problems: list[ShardProblem]) -> int:
    """Unregister (and delete) every hook's shard of each damaged chunk, so the next harvest regenerates it."""
    chunks = sorted({(p.run, p.chunk) for p in problems})
    with store.transaction() as con:
        for run, chunk in chunks:
            delete(con, ShardRecord, run=run, chunk=chunk)
            update(con, RunRecord, {"run": run}, status="running")
        rebuild_activation_view(con)
    for run, _ in chunks:
        store.remove_orphan_files(run)
    return len(chunks)


def upgrade(store: Store) -> tuple[int | None, int]:
    """Migrate the catalog to the current schema; returns (old, new) versions."""
    with store.reader() as con:
        old = read_version(con)
    Store.create_or_open(store.root)
    return old, SCHEMA_VERSION
