"""Opening a store: the one place that creates, locks, upgrades and sandboxes DuckDB connections.

Layout of a store directory:
    catalog.duckdb                                   runs, documents, tokens, hook points, shards, views
    shards/run=<run>/hook=<hook>/chunk-<n>.parquet   dense activations (see shards.py)
    models/<name>/                                   registry models, built once

DuckDB lets one process write a file, and readers in other processes only while
nobody writes. So no process holds the catalog open: writers open it for one short
transaction (a harvest commits once per shard chunk) and readers for one query.
Both retry while the other holds the lock, so `workbench sql` and the app keep
working, on the last committed state, during a harvest.
"""

from __future__ import annotations

import contextlib
import random
import re
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import numpy as np

from workbench.errors import StoreError, StoreLockedError
from workbench.store import schema
from workbench.store.records import ShardRecord, read_all, scalar
from workbench.store.shards import read_shard

CATALOG_NAME = "catalog.duckdb"
RUN_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}$")


def _is_lock_conflict(exc: Exception) -> bool:
    return "lock" in str(exc).lower() and isinstance(exc, (duckdb.IOException, duckdb.ConnectionException))


class Store:
    """A store directory. Cheap to construct; connections are opened per transaction or query."""

    def __init__(self, root: str | Path, lock_timeout_s: float = 120.0):
        self.root = Path(root).expanduser().resolve()
        self.catalog_path = self.root / CATALOG_NAME
        self.lock_timeout_s = lock_timeout_s

    # -- opening -------------------------------------------------------------------

    @classmethod
    def create_or_open(cls, root: str | Path, **kwargs) -> "Store":
        """Open a store for writing, creating it (or upgrading an older schema) if needed."""
        store = cls(Path(root), **kwargs)
        try:
            store.root.mkdir(parents=True, exist_ok=True)
            probe = store.root / ".write-probe"
            probe.write_bytes(b"ok")
            probe.unlink()
        except OSError as exc:
            raise StoreError(
                f"Cannot write to the store directory {store.root} ({exc.strerror or exc}). "
                "Choose a writable --store path, or fix its permissions."
            ) from exc
        with store._connect(read_only=False) as con:
            schema.create_or_upgrade(con, str(store.catalog_path))
        return store

    @classmethod
    def open_existing(cls, root: str | Path, **kwargs) -> "Store":
        """Open a store that must already exist (for reading); never creates anything."""
        store = cls(Path(root), **kwargs)
        if not store.catalog_path.exists():
            raise StoreError(
                f"No store at {store.root} (no {CATALOG_NAME}). Create one with `workbench harvest ... --store {root}`."
            )
        with store.reader() as con:
            version = schema.read_version(con)
        schema.check_readable(version, str(store.catalog_path))
        assert version is not None  # check_readable refuses a catalog without a version
        if version < schema.SCHEMA_VERSION:
            raise StoreError(
                f"The store at {store.root} uses schema v{version}; this workbench uses v{schema.SCHEMA_VERSION}. "
                f"Upgrade it in place with `workbench store upgrade {root}` (it keeps all data)."
            )
        return store

    @contextlib.contextmanager
    def _connect(self, read_only: bool) -> Iterator[duckdb.DuckDBPyConnection]:
        deadline = time.monotonic() + self.lock_timeout_s
        delay = 0.01
        while True:
            try:
                con = duckdb.connect(
                    str(self.catalog_path), read_only=read_only, config={"file_search_path": str(self.root)}
                )
                break
            except (duckdb.IOException, duckdb.ConnectionException) as exc:
                if not _is_lock_conflict(exc):
                    raise StoreError(f"Cannot open the catalog {self.catalog_path}: {exc}") from exc
                if time.monotonic() > deadline:
                    raise StoreLockedError(
                        f"The store {self.root} stayed locked by another process for {self.lock_timeout_s:.0f}s "
                        f"({str(exc).splitlines()[0][:200]}). Wait for it to finish, or stop it."
                    ) from exc
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 0.25)
        try:
            yield con
        finally:
            con.close()

    @contextlib.contextmanager
    def writer(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-write connection for one transaction; released on exit so readers can get in."""
        with self._connect(read_only=False) as con:
            yield con

    @contextlib.contextmanager
    def reader(self, sandboxed: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-only connection. Sandboxed: it can read the shard files and nothing else on disk."""
        with self._connect(read_only=True) as con:
            if sandboxed:
                shards, features = str(self.root / "shards") + "/", str(self.root / "features") + "/"
                # Both spellings: the views use paths relative to the store, resolved via file_search_path.
                con.execute("SET allowed_directories = ?", [[shards, "shards/", features, "features/"]])
                con.execute("SET enable_external_access = false")
                con.execute("SET autoinstall_known_extensions = false")
                con.execute("SET autoload_known_extensions = false")
                con.execute("SET lock_configuration = true")
            yield con

    # -- transactions --------------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        with self.writer() as con:
            con.execute("BEGIN TRANSACTION")
            try:
                yield con
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise

    # -- shards --------------------------------------------------------------------

    @staticmethod
    def shard_path(run: str, hook: str, chunk: int) -> str:
        """The store-relative path of a shard (what the catalog records)."""
        return f"shards/run={run}/hook={hook}/chunk-{chunk:06d}.parquet"

    def shards(self, run: str | None = None, hook: str | None = None) -> list[ShardRecord]:
        key = {name: value for name, value in (("run", run), ("hook", hook)) if value is not None}
        with self.reader() as con:
            return read_all(con, ShardRecord, **key)

    def contexts(self, run: str, n_contexts: int | None = None) -> np.ndarray:
        """The run's vocab ids as [n_contexts, context_len] (all of them, or the first n), read back from the store.

        Row c holds token ids c * context_len ... (c + 1) * context_len - 1: token_id is the row index in the run.
        """
        with self.reader() as con:
            context_len = scalar(con, "SELECT context_len FROM runs WHERE run = ?", [run])
            limit = n_contexts if n_contexts is not None else 2**31 - 1
            ids = con.execute("SELECT vocab_id FROM tokens WHERE run = ? AND context_id < ? ORDER BY token_id",
                              [run, limit]).fetchnumpy()["vocab_id"]
        return np.asarray(ids, dtype=np.int64).reshape(-1, context_len)

    def iter_activations(self, run: str, hook: str) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (token_ids, acts float32 [n, d]) per committed shard of (run, hook), each checked against its checksum.

        Trainers read shards here directly rather than through SQL (see shards.py).
        """
        records = self.shards(run, hook)
        if not records:
            raise StoreError(f"No committed activations for run '{run}' at hook '{hook}'. See `workbench store info {self.root}`.")
        for record in records:
            token_ids, acts = read_shard(self.root / record.path, record.sha256, record.n_rows)
            yield token_ids, acts.astype(np.float32, copy=False)

    def remove_orphan_files(self, run: str) -> int:
        """Delete shard files of `run` that no committed catalog row points to (left by a kill before commit)."""
        run_dir = self.root / "shards" / f"run={run}"
        if not run_dir.exists():
            return 0
        committed = {r.path for r in self.shards(run)}
        removed = 0
        for file in run_dir.rglob("*"):
            if file.is_file() and file.relative_to(self.root).as_posix() not in committed:
                file.unlink()
                removed += 1
        return removed



def make_run_name(*parts: str) -> str:
    """A valid run name from free text (model ids, corpus labels, numbers); deterministic, so that
    repeating a command without a name finds the same run."""
    return re.sub(r"[^A-Za-z0-9_.\-]+", "-", "-".join(parts)).strip("-.")[:100]


def check_run_name(run: str) -> str:
    if not RUN_NAME_RE.match(run):
        raise StoreError(
            f"Run name '{run}' is not allowed: use letters, digits, '_', '.' and '-' (up to 100 characters), "
            "starting with a letter or digit."
        )
    return run
