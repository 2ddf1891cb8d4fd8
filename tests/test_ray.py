"""Harvest on a real local Ray cluster (2 CPU workers): byte-identical to a local harvest, through a killed actor
and a killed driver; and the refusals that must change nothing (a dead address, a store the workers cannot see)."""

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from workbench.harvest import HarvestConfig, run_harvest
from workbench.store import Store

from conftest import free_port, run_cli, run_cli_in_process, start_cli, store_snapshot

HOOKS = "blocks.0.hook_out,blocks.1.mlp.hook_out"
SETTINGS = ["--model", "tiny", "--hooks", HOOKS, "--tokens", "32768", "--chunk-contexts", "4"]


def _store(root: Path, models_dir: Path) -> Path:
    root.mkdir(parents=True)
    (root / "models").symlink_to(models_dir, target_is_directory=True)
    return root


def _contents(store: Path, run: str) -> dict[str, str]:
    """sha256 of every file under the run's shard folder, by path below it."""
    folder = store / "shards" / f"run={run}"
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _wait_for_files(folder: Path, at_least: int, process: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the harvest ended (rc {process.returncode}) before it could be interrupted")
        if folder.exists() and sum(1 for _ in folder.rglob("*.parquet")) >= at_least:
            return
        time.sleep(0.05)
    pytest.fail("the harvest wrote no shards in time")


def _actor_pids() -> list[int]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if cmdline.read_bytes().startswith(b"ray::ChunkHarvester"):
                found.append(int(cmdline.parent.name))
        except OSError:
            continue
    return found


@pytest.fixture
def local_shards(tmp_path_factory, models_dir) -> dict[str, str]:
    """A local harvest of SETTINGS' arguments (many small chunks, so that kills land mid-run)."""
    root = _store(tmp_path_factory.mktemp("local") / "store", models_dir)
    config = HarvestConfig(
        model="tiny", hooks=HOOKS.split(","), store=str(root), tokens=32768, chunk_contexts=4, run="h"
    )
    run_harvest(config, progress=False)
    return _contents(root, "h")


@pytest.mark.slow  # two local Ray clusters and 64 chunks: ~35 s; the default suite checks the bytes in-process
def test_a_killed_actor_then_a_killed_driver_and_the_shards_equal_a_local_harvest_byte_for_byte(
    tmp_path, models_dir, local_shards
):
    """kill -9 of an actor mid-harvest (it is replaced and its chunks redone), then of the driver (the same command
    resumes): every chunk is committed once, no .partial or orphan file is left, and every byte equals a local
    harvest's."""
    root = _store(tmp_path / "store", models_dir)
    args = ["harvest", *SETTINGS, "--store", str(root), "--run", "h", "--ray", "--workers", "2"]
    # Its own session, so that the local cluster the driver started can be cleaned up after its kill -9.
    driver = start_cli(*args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_for_files(root / "shards", 8, driver)
        victims = _actor_pids()
        assert len(victims) == 2, victims
        os.kill(victims[0], signal.SIGKILL)
        _wait_for_files(root / "shards", 24, driver)  # the harvest goes on, on the replacement actor too
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=60)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the cluster's processes, orphaned by the driver's death
    committed = len(Store.open_existing(root).shards("h"))
    assert 0 < committed < len(local_shards)
    resumed = start_cli(*args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-3000:]
    assert "resumed after" in out
    assert _contents(root, "h") == local_shards
    assert len(Store.open_existing(root).shards("h")) == len(local_shards)


def test_a_ray_address_that_does_not_answer_is_refused_and_changes_nothing(store_dir):
    Store.create_or_open(store_dir)
    before = store_snapshot(store_dir)
    port = free_port()  # a port nobody listens on
    result = run_cli_in_process("harvest", "--model", "tiny", "--hooks", "blocks.0.hook_out", "--store",
                                str(store_dir), "--ray", f"127.0.0.1:{port}")  # fmt: skip
    assert result.returncode != 0
    assert f"No Ray cluster answers at 127.0.0.1:{port}" in result.stderr
    assert "ray start --head" in result.stderr
    assert store_snapshot(store_dir) == before


@pytest.mark.slow  # two `ray start` nodes: ~18 s
def test_a_store_the_workers_cannot_see_is_refused_before_anything_is_written(tmp_path, models_dir):
    """A real two-node cluster on this machine: the second node runs in its own mount namespace with an empty
    tmpfs over the store's folder, as a node without the shared filesystem would be."""
    import shutil

    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) to give a Ray node its own mount namespace")
    ray_cli = str(Path(sys.executable).parent / "ray")
    shared = tmp_path / "shared"
    root = _store(shared / "store", models_dir)
    Store.create_or_open(root)
    before = store_snapshot(root)
    port = free_port()
    env = os.environ | {"RAY_AUTH_MODE": "token"}  # `ray start` clusters of Ray 2.5x+ authenticate their nodes
    groups = []  # each `ray start` in its own session: its daemons are stopped by process group, not `ray stop`

    def start(command: list[str]) -> None:
        launched = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    start_new_session=True)  # fmt: skip
        groups.append(launched.pid)
        _, err = launched.communicate(timeout=120)
        assert launched.returncode == 0, err[-2000:]

    try:
        start([ray_cli, "start", "--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false"])
        start(["unshare", "-m", "--propagation", "private", "sh", "-c",
               f"mount -t tmpfs none {shared} && {ray_cli} start --address=127.0.0.1:{port} --num-cpus=1"])  # fmt: skip
        result = run_cli("harvest", "--model", "tiny", "--hooks", "blocks.0.hook_out", "--store", str(root),
                         "--ray", f"127.0.0.1:{port}", timeout=180, env=env)  # fmt: skip
    finally:
        for group in groups:
            try:
                os.killpg(group, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert result.returncode != 0
    assert "cannot share files with this machine" in result.stderr and "Nothing was harvested" in result.stderr
    assert store_snapshot(root) == before
    assert not list(root.glob(".probe-*"))


@pytest.fixture(scope="module")
def ray_here():
    """A local Ray cluster of 2 CPU workers in this process, shut down after the module."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def encoded_store(tmp_path_factory, models_dir) -> Store:
    from workbench.train import TrainConfig, run_train

    root = _store(tmp_path_factory.mktemp("encode") / "store", models_dir)
    run_harvest(HarvestConfig(model="tiny", hooks=["blocks.0.hook_out", "blocks.1.hook_out"], store=str(root),
                              tokens=4096, run="h", chunk_contexts=8, store_dtype="bfloat16"), progress=False)  # fmt: skip
    run_train(TrainConfig(store=str(root), hook=["blocks.1.hook_out"], k=[4], latents=[64], tokens=10_240,
                          batch_size=512, name="d"), progress=False)  # fmt: skip
    return Store.open_existing(root)


def test_ray_encode_writes_the_same_rows_as_the_table_version(ray_here, encoded_store):
    from workbench.encode import EncodeConfig, run_encode

    root = str(encoded_store.root)
    query = "SELECT run, token_id, feature, value FROM feature_acts WHERE dictionary = 'd' ORDER BY ALL"
    run_encode(EncodeConfig(store=root, dictionary="d", feature_store="table"), progress=False)
    with encoded_store.reader() as con:
        in_table = con.execute(query).fetchall()
        stats = con.execute("SELECT * FROM feature_stats ORDER BY feature").fetchall()
    result = run_encode(EncodeConfig(store=root, dictionary="d", ray="local", workers=2, bucket_width=16),
                        progress=False)  # fmt: skip
    assert (result.feature_store, result.n_files, result.n_rows) == ("parquet", 4, len(in_table))
    with encoded_store.reader() as con:
        assert con.execute(query).fetchall() == in_table
        assert con.execute("SELECT * FROM feature_stats ORDER BY feature").fetchall() == stats
        assert con.execute("SELECT count(*) FROM feature_rows").fetchone()[0] == 0


def test_the_shards_read_by_ray_data_and_polars_equal_the_activations_view(ray_here, encoded_store):
    """The README's three lines per engine; bf16 shards are FLOAT, as every reader sees them."""
    import numpy as np
    import polars as pl
    import ray.data
    from ray.data.datasource import Partitioning

    shards = str(encoded_store.root / "shards")
    with encoded_store.reader() as con:
        view = con.sql("SELECT run, hook, token_id, act FROM activations ORDER BY hook, token_id").to_arrow_table()

    by_ray = ray.data.read_parquet(shards, partitioning=Partitioning("hive")).to_pandas()
    by_ray = by_ray.sort_values(["hook", "token_id"]).reset_index(drop=True)
    by_polars = pl.scan_parquet(f"{shards}/**/*.parquet", hive_partitioning=True).collect().sort("hook", "token_id")

    assert len(view) == len(by_ray) == len(by_polars) == 2 * 4096
    for frame in (by_ray, by_polars):
        assert list(frame["run"]) == view["run"].to_pylist() and list(frame["hook"]) == view["hook"].to_pylist()
        assert np.array_equal(np.asarray(frame["token_id"]), view["token_id"].to_numpy())
        assert np.array_equal(np.stack(list(frame["act"])), np.stack(view["act"].to_numpy(zero_copy_only=False)))


def test_a_ray_harvest_writes_shards_byte_identical_to_a_local_one(ray_here, tmp_path, models_dir):
    stores = {}
    for name, ray in (("local", None), ("ray", "local")):
        stores[name] = _store(tmp_path / name, models_dir)
        config = HarvestConfig(model="tiny", hooks=HOOKS.split(","), store=str(stores[name]), tokens=8192, run="h",
                               chunk_contexts=8, ray=ray, workers=2)  # fmt: skip
        result = run_harvest(config, progress=False)
        assert result.tokens_harvested_now == 8192
    ray_shards = _contents(stores["ray"], "h")
    assert len(ray_shards) == 2 * 8 and ray_shards == _contents(stores["local"], "h")
    catalogs = [[(s.hook, s.chunk, s.path, s.first_token, s.n_rows, s.n_bytes, s.sha256) for s in store.shards("h")]
                for store in map(Store.open_existing, stores.values())]  # fmt: skip
    assert catalogs[0] == catalogs[1]  # the driver registered every chunk, as the local harvest did
