"""Training across processes: real torchrun, gloo backend, 2 processes on this machine's CPU.

Data parallel equals one process on the same global batches (every family: the batch-wide selections are
made across ranks); a rank killed with kill -9 resumes bit for bit; distributed dictionaries equal the
same dictionaries trained together in one process; and bad launches change nothing.
"""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from workbench.checkpoints import readable_folder
from workbench.harvest import HarvestConfig, run_harvest
from workbench.store import Store, lookups
from workbench.train import TrainConfig, run_train

from conftest import REPO, free_port, run_cli_in_process, store_snapshot

HOOKS = ["blocks.0.hook_out", "blocks.1.hook_out"]
COMMON = dict(hook=[HOOKS[1]], k=[8], latents=[128], batch_size=512, seed=3)
FAMILIES = ["topk", "batchtopk", "matryoshka", "mutualchoice", "featurechoice", "topafa"]
# Selections are discrete: after many steps a float-rounding difference flips a latent at the threshold and the
# runs drift apart, so the batch-dependent families are compared after 6 steps (feature choice, with a
# boundary per latent, after 2); TopK (per token) after 60.
TOKENS = {arch: 512 * {"topk": 60, "featurechoice": 2}.get(arch, 6) for arch in FAMILIES}
# A sweep of 4 dictionaries (2 hooks x 2 k) spread over the 2 ranks with --distribute-dictionaries.
SPREAD = dict(hook=HOOKS, k=[4, 8], latents=[64], batch_size=256, tokens=5120)
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port"]


def _torchrun(*args: str, **popen) -> subprocess.Popen:
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    return subprocess.Popen([*TORCHRUN, free_port(), *args], cwd=REPO, env=env, text=True, **popen)


def _weights(store: Store, name: str) -> dict[str, torch.Tensor]:
    return load_file(store.root / "dictionaries" / name / "sae_weights.safetensors")


@pytest.fixture(scope="module")
def store(tmp_path_factory, models_dir) -> Store:
    """One harvested store and one torchrun launch that trains every family data parallel (names ddp-<arch>)."""
    root = tmp_path_factory.mktemp("distributed") / "store"
    root.mkdir()
    (root / "models").symlink_to(models_dir, target_is_directory=True)
    run_harvest(
        HarvestConfig(model="tiny", hooks=HOOKS, store=str(root), tokens=16384, run="d", chunk_contexts=16),
        progress=False,
    )
    runs = {f"ddp-{arch}": COMMON | {"arch": arch, "tokens": TOKENS[arch]} for arch in FAMILIES}
    runs["spread"] = SPREAD | {"distribute_dictionaries": True}  # in the same launch: one torchrun start less
    launch = _torchrun("tests/torchrun_families.py", str(root), json.dumps(runs), stderr=subprocess.PIPE)
    _, err = launch.communicate(timeout=300)
    assert launch.returncode == 0, err[-3000:]
    return Store.open_existing(root)


@pytest.mark.parametrize("arch", FAMILIES)
def test_data_parallel_training_equals_one_process_on_the_same_global_batches(store, arch):
    run_train(TrainConfig(store=str(store.root), name=f"one-{arch}", arch=arch, tokens=TOKENS[arch], **COMMON))
    one, ddp = _weights(store, f"one-{arch}"), _weights(store, f"ddp-{arch}")
    assert one.keys() == ddp.keys()
    for key in one:
        torch.testing.assert_close(ddp[key], one[key], rtol=1e-4, atol=2e-5, msg=f"{arch} {key}")
    single, parallel = (
        lookups.completed_dictionary(store, f"one-{arch}"),
        lookups.completed_dictionary(store, f"ddp-{arch}"),
    )
    # The catalog row (written by rank 0 alone) counts the global batches' tokens and global metrics.
    assert parallel.tokens_done == single.tokens_done == TOKENS[arch]
    assert parallel.train_fvu == pytest.approx(single.train_fvu, rel=1e-4)
    assert parallel.train_l0 == pytest.approx(single.train_l0, rel=1e-4)
    assert parallel.dead_fraction == single.dead_fraction


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _rank_pid(launcher: int, rank: int) -> int | None:
    for pid in _children(launcher):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env:
            return pid
    return None


def test_a_rank_killed_with_kill_9_resumes_exactly(store):
    """Same settings as ddp-topk, checkpointing every step; rank 1 is killed mid-run, then the same command
    resumes from rank 0's last checkpoint and ends bit-identical to the uninterrupted run; and the same
    checkpoint resumed by a single process ends equal to float tolerance."""
    args = ["-m", "workbench", "train", "--store", str(store.root), "--hook", HOOKS[1], "--k", "8"]
    args += ["--latents", "128", "--batch-size", "512", "--seed", "3", "--tokens", str(TOKENS["topk"])]
    args += ["--name", "killed", "--checkpoint-seconds", "0"]
    launch = _torchrun(*args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    state = store.root / "dictionaries" / "killed" / "checkpoint" / "state.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if state.exists() and json.loads(state.read_text() or "{}").get("step", 0) >= 10:
            break
        time.sleep(0.02)
    victim = _rank_pid(launch.pid, 1)
    assert victim is not None, "rank 1 not found"
    os.kill(victim, 9)
    _, err = launch.communicate(timeout=120)
    assert launch.returncode != 0, "the run finished before rank 1 was killed"
    saved = readable_folder(state.parent)  # the last complete checkpoint, even if rank 0 died between renames
    assert saved is not None
    stopped_at = json.loads((saved / "state.json").read_text())["step"]
    assert 10 <= stopped_at < 60
    assert lookups.dictionary(store, "killed").status != "complete"

    # A copy of that checkpoint resumed by one process: allowed (the global batches do not depend on the split),
    # and equal to the uninterrupted run up to float rounding.
    shutil.copytree(saved, store.root / "dictionaries" / "one-process" / "checkpoint")
    run_train(TrainConfig(store=str(store.root), name="one-process", tokens=TOKENS["topk"], **COMMON), progress=False)
    for key, value in _weights(store, "one-process").items():
        torch.testing.assert_close(value, _weights(store, "ddp-topk")[key], rtol=1e-4, atol=2e-5)

    resumed = _torchrun(*args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-3000:]
    assert out.count("Dictionary 'killed' is trained") == 1  # rank 0 reports for both
    after, uninterrupted = _weights(store, "killed"), _weights(store, "ddp-topk")
    for key in uninterrupted:
        assert torch.equal(after[key], uninterrupted[key]), key
    assert lookups.completed_dictionary(store, "killed").steps_done == 60


def test_distributed_dictionaries_equal_the_group_trained_in_one_process(store):
    """Each rank trained its own 2 of the 4 (no communication); rank 0 recorded all of them."""
    together = run_train(TrainConfig(store=str(store.root), name="together", **SPREAD), progress=False)
    assert len(together.dictionaries) == 4
    for record in together.dictionaries:
        spread = lookups.completed_dictionary(store, record.name.replace("together", "spread", 1))
        assert (spread.steps_done, spread.tokens_done) == (20, 5120)
        assert spread.train_fvu == pytest.approx(record.train_fvu, rel=1e-4)
        a, b = _weights(store, record.name), _weights(store, spread.name)
        for key in a:  # the same arithmetic, up to the summation order of torchrun's one thread per rank
            torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6)


def test_more_processes_than_the_node_has_cpus_is_refused_before_anything_is_written(store, monkeypatch):
    before = store_snapshot(store.root)
    cores = os.cpu_count() or 1
    monkeypatch.setenv("WORLD_SIZE", str(cores + 1))
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(cores + 1))
    result = run_cli_in_process("train", "--store", str(store.root), "--hook", HOOKS[1], "--name", "too-many")
    assert result.returncode != 0
    assert f"--nproc-per-node {cores} or fewer" in result.stderr
    assert store_snapshot(store.root) == before


def test_ranks_started_with_different_arguments_are_refused(store):
    """Two processes of one process group (as two nodes' torchrun would start them) with different --seed."""
    before = store_snapshot(store.root)
    port = free_port()
    procs = []
    for rank, seed in ((0, "1"), (1, "2")):
        env = os.environ | {"RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
                            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}  # fmt: skip
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "workbench",
                    "train",
                    "--store",
                    str(store.root),
                    "--hook",
                    HOOKS[1],
                    "--name",
                    "mismatch",
                    "--seed",
                    seed,
                ],
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )  # fmt: skip
        )
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode != 0
        assert "different arguments (seed" in err
    assert store_snapshot(store.root) == before
