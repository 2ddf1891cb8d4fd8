"""A harvest's writes to the catalog: registering a run, and committing its shard chunks one by one.

A chunk's shards (one per hook) are registered in one transaction, together with the run's
status and the `activations` view, so a reader sees a chunk either whole or not at all, and a
harvest killed at any moment resumes from its committed chunks.
"""

from __future__ import annotations

import duckdb
import pyarrow as pa

from workbench.errors import StoreError
from workbench.store.catalog import Store
from workbench.store.records import HookPointRecord, RunRecord, ShardRecord, insert, insert_arrow, scalar, update
from workbench.store.schema import rebuild_activation_view


def create_run(store: Store, run: RunRecord, hook_points: list[HookPointRecord], tokens: pa.Table,
               documents: pa.Table) -> None:
    """Register a new run with its tokens and documents, before any activation is written."""
    with store.transaction() as con:
        insert(con, run)
        insert_arrow(con, "tokens", tokens)
        insert_arrow(con, "documents", documents)
        for point in hook_points:
            insert(con, point)


def committed_chunks(store: Store, run: str, n_hooks: int) -> set[int]:
    """The chunks of `run` whose shards are committed at every one of its `n_hooks` hooks."""
    with store.reader() as con:
        rows = con.execute(
            "SELECT chunk FROM shards WHERE run = ? GROUP BY chunk HAVING count(*) = ?", [run, n_hooks]).fetchall()
    return {r[0] for r in rows}


def commit_chunk(store: Store, shards: list[ShardRecord], n_chunks: int) -> None:
    """Register one chunk's shards (files already synced) and mark the run complete once all n_chunks are in."""
    run = shards[0].run
    try:
        with store.transaction() as con:
            for shard in shards:
                insert(con, shard)
            done = scalar(con, "SELECT count(DISTINCT chunk) FROM shards WHERE run = ?", [run])
            update(con, RunRecord, {"run": run}, status="complete" if done == n_chunks else "running")
            rebuild_activation_view(con)
    except duckdb.Error as exc:
        raise StoreError(
            f"Could not commit chunk {shards[0].chunk} of run '{run}' to the catalog "
            f"({str(exc).splitlines()[0][:300]}). "
            "Everything committed before it is intact (a full disk is the usual cause): fix that, then run the "
            "same command again to resume."
        ) from exc
