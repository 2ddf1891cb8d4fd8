"""Harvest on a real local Ray cluster (2 CPU workers): byte-identical to a local harvest, through a killed actor
and a killed driver; and the refusals that must change nothing (a dead address, a store the workers cannot see)."""

import hashlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from workbench.harvest import HarvestConfig, run_harvest
from workbench.store import Store

from conftest import run_cli_in_process, start_cli, store_snapshot

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


@pytest.fixture(scope="module")
def local_shards(tmp_path_factory, models_dir) -> dict[str, str]:
    root = _store(tmp_path_factory.mktemp("local") / "store", models_dir)
    config = HarvestConfig(
        model="tiny", hooks=HOOKS.split(","), store=str(root), tokens=32768, chunk_contexts=4, run="h"
    )
    run_harvest(config, progress=False)
    return _contents(root, "h")


def test_a_killed_actor_is_replaced_and_the_shards_equal_a_local_harvest_byte_for_byte(
    tmp_path, models_dir, local_shards
):
    root = _store(tmp_path / "store", models_dir)
    harvest = start_cli("harvest", *SETTINGS, "--store", str(root), "--run", "h", "--ray", "--workers", "2",
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    _wait_for_files(root / "shards", 8, harvest)
    victims = _actor_pids()
    assert len(victims) == 2, victims
    os.kill(victims[0], signal.SIGKILL)
    _, err = harvest.communicate(timeout=300)
    assert harvest.returncode == 0, err[-3000:]
    assert _contents(root, "h") == local_shards  # every chunk once, no .partial or orphan file, same bytes
    store = Store.open_existing(root)
    assert len(store.shards("h")) == len(local_shards)


def test_a_killed_driver_resumes_and_the_shards_equal_a_local_harvest(tmp_path, models_dir, local_shards):
    root = _store(tmp_path / "store", models_dir)
    args = ["harvest", *SETTINGS, "--store", str(root), "--run", "h", "--ray", "--workers", "2"]
    # Its own session, so that the local cluster the driver started can be cleaned up after its kill -9.
    driver = start_cli(*args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_for_files(root / "shards", 8, driver)
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=60)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the cluster's processes, orphaned by the driver's death
    committed = len(Store.open_existing(root).shards("h"))
    assert committed < len(local_shards)
    resumed = start_cli(*args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-3000:]
    assert "resumed after" in out
    assert _contents(root, "h") == local_shards


def test_a_ray_address_that_does_not_answer_is_refused_and_changes_nothing(store_dir):
    Store.create_or_open(store_dir)
    before = store_snapshot(store_dir)
    with socket_bound() as port:  # a port nobody listens on
        result = run_cli_in_process("harvest", "--model", "tiny", "--hooks", "blocks.0.hook_out", "--store",
                                    str(store_dir), "--ray", f"127.0.0.1:{port}")  # fmt: skip
    assert result.returncode != 0
    assert f"No Ray cluster answers at 127.0.0.1:{port}" in result.stderr
    assert "ray start --head" in result.stderr
    assert store_snapshot(store_dir) == before


class socket_bound:
    """A local port that is free and closed: connecting to it is refused at once."""

    def __enter__(self) -> int:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    def __exit__(self, *exc) -> None:
        pass
