"""Corrupted and truncated shards, a full disk, and stores written by other schema versions."""

import subprocess
import uuid

import duckdb
import numpy as np
import pytest

from workbench.errors import CorruptShardError, StoreError, StoreVersionError
from workbench.harvest import HarvestConfig, run_harvest
from workbench.store import Store, schema
from workbench.store.maintenance import verify
from workbench.store.sql import run_query

from conftest import downgrade_to_v1, run_cli, store_snapshot


def _harvest(store_dir, **overrides):
    settings = dict(
        model="tiny",
        hooks=["blocks.1.hook_out", "blocks.0.hook_in"],
        store=str(store_dir),
        tokens=2048,
        context_len=64,
        chunk_contexts=8,
        batch_size=8,
        run="r",
    )
    settings.update(overrides)
    return run_harvest(HarvestConfig(**settings), progress=False)


def _all_acts(store, hook="blocks.1.hook_out"):
    return np.concatenate([a for _, a in store.iter_activations("r", hook)])


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_damaged_shard_is_found_by_checksum_and_regenerated(store_dir, damage):
    _harvest(store_dir)
    store = Store.open_existing(store_dir)
    original = _all_acts(store)
    victim = store_dir / store.shards("r", "blocks.1.hook_out")[2].path
    data = bytearray(victim.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
        victim.write_bytes(bytes(data))
    elif damage == "truncate":
        victim.write_bytes(bytes(data[: len(data) // 3]))
    else:
        victim.unlink()

    with pytest.raises(CorruptShardError, match="chunk-000002.*store verify"):
        _all_acts(store)
    checked, problems = verify(store)
    assert checked == 2 * 4 and [(p.hook, p.chunk) for p in problems] == [("blocks.1.hook_out", 2)]

    cli = run_cli("store", "verify", str(store_dir))
    assert cli.returncode == 1 and "chunk=2" in cli.stdout and "--drop-corrupt" in cli.stdout
    before_other_hook = _all_acts(store, "blocks.0.hook_in")
    assert run_cli("store", "verify", str(store_dir), "--drop-corrupt").returncode == 0
    with store.reader() as con:
        assert con.execute("SELECT status FROM runs").fetchone()[0] == "running"
    result = _harvest(store_dir)  # the same command regenerates the dropped chunk, for every hook
    assert result.tokens_harvested_now == 8 * 64
    np.testing.assert_array_equal(_all_acts(store), original)
    np.testing.assert_array_equal(_all_acts(store, "blocks.0.hook_in"), before_other_hook)
    assert verify(store)[1] == []


def test_store_written_by_a_newer_schema_is_refused_untouched(store_dir):
    _harvest(store_dir)
    con = duckdb.connect(str(store_dir / "catalog.duckdb"))
    con.execute("UPDATE schema_info SET value = '99' WHERE key = 'schema_version'")
    con.close()
    before = store_snapshot(store_dir)
    with pytest.raises(StoreVersionError, match="newer workbench \\(schema v99\\).*Nothing was changed"):
        Store.open_existing(store_dir)
    with pytest.raises(StoreVersionError, match="schema v99"):
        _harvest(store_dir, run="other")
    cli = run_cli("sql", str(store_dir), "SELECT 1")
    assert cli.returncode == 2 and "newer workbench" in cli.stderr
    assert store_snapshot(store_dir) == before


def test_v1_store_is_refused_for_reading_and_upgraded_in_place(store_dir):
    _harvest(store_dir)
    original = _all_acts(Store(store_dir))
    downgrade_to_v1(store_dir)
    with pytest.raises(StoreError, match="schema v1.*workbench store upgrade"):
        Store.open_existing(store_dir)
    upgraded = run_cli("store", "upgrade", str(store_dir))
    assert upgraded.returncode == 0 and f"v1 -> v{schema.SCHEMA_VERSION}" in upgraded.stdout
    store = Store.open_existing(store_dir)
    with store.reader() as con:
        assert con.execute("SELECT value FROM schema_info WHERE key='schema_version'").fetchone()[0] == str(
            schema.SCHEMA_VERSION
        )
        assert con.execute("SELECT count(*) FROM probe_runs").fetchone()[0] == 0
        assert con.execute("SELECT count(*) FROM dictionaries").fetchone()[0] == 0
    np.testing.assert_array_equal(_all_acts(store), original)
    assert run_query(store, "SELECT count(*) AS n FROM activations").table.to_pylist()[0]["n"] == 2 * 2048


def test_failed_migration_leaves_the_store_as_it_was(store_dir, monkeypatch):
    _harvest(store_dir)
    before = store_snapshot(store_dir)

    def broken(con):
        con.execute("ALTER TABLE runs ADD COLUMN half_done VARCHAR")
        raise RuntimeError("migration bug")

    current = schema.SCHEMA_VERSION
    monkeypatch.setattr(schema, "SCHEMA_VERSION", current + 1)
    monkeypatch.setitem(schema.MIGRATIONS, current, broken)
    with pytest.raises(RuntimeError, match="migration bug"):
        Store.create_or_open(store_dir)
    assert store_snapshot(store_dir) == before


@pytest.fixture
def small_filesystem(tmp_path):
    mount_point = tmp_path / f"fs-{uuid.uuid4().hex[:6]}"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount_point)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here to fill a disk ({mounted.stderr.decode().strip()})")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


def test_full_disk_keeps_committed_work_and_resumes(small_filesystem, models_dir):
    store_dir = small_filesystem / "store"
    store_dir.mkdir()
    (store_dir / "models").symlink_to(models_dir)
    settings = dict(tokens=32768, chunk_contexts=16)  # ~4 MB catalog + ~14 MB of shards on an 8 MB filesystem
    with pytest.raises(StoreError, match="(?i)space|full disk"):
        _harvest(store_dir, **settings)
    store = Store.open_existing(store_dir)
    committed = sum(s.n_rows for s in store.shards())
    assert committed > 0 and verify(store)[1] == []
    assert not list((store_dir / "shards").rglob("*.partial"))

    subprocess.run(["mount", "-o", "remount,size=64m", str(small_filesystem)], check=True)
    result = _harvest(store_dir, **settings)
    assert result.chunks_resumed_from > 0 and result.tokens_harvested_now < 32768
    assert sum(s.n_rows for s in store.shards()) == 2 * 32768 and verify(store)[1] == []
