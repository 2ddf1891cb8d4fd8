"""Shared fixtures: the tiny model is built once per session; each test gets its own real store.

Tests marked `slow` run on the real SmolLM2-135M and are skipped unless pytest gets --slow
(`make test-slow`).
"""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from workbench.models import resolve_model_dir

REPO = Path(__file__).resolve().parent.parent


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true", help="also run the slow tests on the real SmolLM2-135M model")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--slow"):
        return
    skip = pytest.mark.skip(reason="slow test (SmolLM2, or a multi-node Ray cluster): run with --slow (make test-slow)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    """Registry models shared by every test store. Override with WORKBENCH_TEST_MODELS to reuse a built SmolLM2."""
    # Absolute, because store_dir links to it from each test's own tmp folder: a relative link target
    # (the README's `WORKBENCH_TEST_MODELS=store/models`) would resolve against that folder instead.
    path = Path(os.environ.get("WORKBENCH_TEST_MODELS") or tmp_path_factory.mktemp("models")).resolve()
    resolve_model_dir("tiny", path)
    return path


@pytest.fixture
def store_dir(tmp_path, models_dir) -> Path:
    """An empty store directory whose models/ points at the session's built models."""
    root = tmp_path / "store"
    root.mkdir()
    (root / "models").symlink_to(models_dir, target_is_directory=True)
    return root


@pytest.fixture(scope="session")
def tiny_dir(models_dir) -> Path:
    return models_dir / "tiny"


@contextmanager
def deterministic_torch(seed: int = 0):
    """Seeded, one thread, deterministic kernels, and the caller's settings back afterwards.

    For tests whose measured number depends on every float: a training run whose early discrete choices
    (which code wins) flip with the last bit. With two threads the order of a parallel reduction follows the
    thread split, so one fixture gave 0.69-0.76 alone and 0.31 after other modules; one thread takes that
    order out of play. The global RNG is forked, so the seed does not leak into later tests either.
    """
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            yield
    finally:
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.set_num_threads(threads)


APP_STORE_HOOK = "blocks.1.hook_out"
APP_STORE_CODEBOOK_SITES = ["blocks.0.mlp.hook_out", "blocks.1.attn.hook_out"]


@pytest.fixture(scope="session")
def app_store(tmp_path_factory, models_dir) -> Path:
    """A store with every table filled: a harvest run, a trained, encoded and evaluated dictionary with a seed
    sibling, sparse-probing scores and explained features (and a dictionary not encoded), depth probes, patching and code circuits, an attribution graph over a transcoder, and encoded
    codebooks. The app's pages and the SQL console's examples read it; built once per session because it is
    the suite's most expensive store. Tests may read it; one that changes it must put it back."""
    from workbench.circuits.attribution import GraphConfig, run_graph
    from workbench.circuits.codes import CodesConfig, run_codes
    from workbench.circuits.patching import PatchingConfig, run_patching
    from workbench.codebooks.finetune import FinetuneSettings
    from workbench.codebooks.train import (
        CodebookEncodeConfig,
        CodebookTrainConfig,
        run_codebook_encode,
        run_codebook_train,
    )
    from workbench.encode import EncodeConfig, run_encode
    from workbench.evals.autointerp import ExplainConfig, run_explain
    from workbench.evals.suite import EvalSuiteConfig, run_eval_suite
    from workbench.harvest import HarvestConfig, run_harvest
    from workbench.probes.depth import DepthProbeConfig, run_depth_probes
    from workbench.train import TrainConfig, run_train

    HOOK, CODEBOOK_SITES = APP_STORE_HOOK, APP_STORE_CODEBOOK_SITES
    root = tmp_path_factory.mktemp("app") / "store"
    root.mkdir()
    (root / "models").symlink_to(models_dir, target_is_directory=True)
    run_harvest(
        HarvestConfig(
            model="tiny",
            hooks=[HOOK, "blocks.1.mlp.hook_in", "blocks.1.mlp.hook_out"],
            store=str(root),
            tokens=8192,
            run="h",
        ),
        progress=False,
    )
    common = dict(store=str(root), hook=HOOK, k=8, latents=128, batch_size=512)
    run_train(TrainConfig(**common, tokens=60_000, name="d"), progress=False)
    run_encode(EncodeConfig(store=str(root), dictionary="d"), progress=False)
    # Core metrics and sparse probing for "d" and one seed sibling ("d-seed1"), and three explained features.
    run_eval_suite(
        EvalSuiteConfig(store=str(root), dictionary="d", ce_tokens=512, seeds=2, benchmarks=["core", "sparse_probing"]),
        progress=False,
    )
    run_explain(
        ExplainConfig(store=str(root), dictionary="d", n_features=3, explainer="tiny", explain_examples=4,
                      test_examples=4),
        progress=False,
    )  # fmt: skip
    run_train(TrainConfig(**common, tokens=2048, name="not-encoded"), progress=False)
    run_depth_probes(
        DepthProbeConfig(model="tiny", store=str(root), tokens=512, lens_tokens=256, skip_tokens=256, name="p"),
        progress=False,
    )
    run_patching(
        PatchingConfig(
            task="ioi", model="tiny", store=str(root), levels=("heads", "layers"), pairs=4, name="ioi-patch"
        ),
        progress=False,
    )
    run_codes(CodesConfig(task="ioi", store=str(root), pairs=8, name="ioi-codes"))
    run_train(
        TrainConfig(
            store=str(root),
            hook="blocks.1.mlp.hook_in",
            hook_out="blocks.1.mlp.hook_out",
            arch="topk",  # k features at every position, the last one included: the only one a last-layer
            k=8,  # transcoder's features can reach the logit from
            latents=128,
            tokens=20_000,
            batch_size=512,
            name="tc1",
        ),
        progress=False,
    )
    run_graph(
        GraphConfig(
            prompt="When Mary and John went to the store, John gave a drink to",
            transcoders=["tc1"],
            store=str(root),
            name="mary",
        )
    )
    run_codebook_train(
        CodebookTrainConfig(
            store=str(root),
            model="tiny",
            sites=CODEBOOK_SITES,
            tokens=2048,
            n_codes=32,
            k=2,
            eval_tokens=512,
            kmeans_tokens=2048,
            name="cb",
            finetune=FinetuneSettings(model_lr=0),
        ),
        progress=False,
    )
    run_codebook_encode(CodebookEncodeConfig(store=str(root), codebook="cb", run="h"), progress=False)
    return root


CLI = [sys.executable, "-m", "workbench.cli"]


def free_port() -> str:
    """A local TCP port nobody listens on now (for torchrun, Ray and the app's server; or to be refused)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def run_cli(*args: str, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """Run `workbench ...` as a real subprocess, as a user would."""
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO, **kwargs)


def start_cli(*args: str, **popen_kwargs) -> subprocess.Popen:
    """Start `workbench ...` as a real subprocess and return at once: for commands a test kills, reads beside,
    or serves from. Output goes where popen_kwargs say (stdout/stderr); the caller waits for it."""
    return subprocess.Popen([*CLI, *args], cwd=REPO, **popen_kwargs)


def run_cli_in_process(*args: str) -> subprocess.CompletedProcess:
    """`workbench ...` through the same main() in this process: its exit status and output, without a new
    interpreter paying the torch/transformers/nnsight imports (seconds each). For refusals and their messages;
    what needs a real process (kill -9, crash safety, the entry point's exit status) uses run_cli."""
    import contextlib
    import io

    from workbench.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exit_:  # argparse's usage errors
            code = exit_.code
    code = 0 if code is None else code if isinstance(code, int) else 1  # as sys.exit(main()) turns it into a status
    return subprocess.CompletedProcess(["workbench", *args], code, out.getvalue(), err.getvalue())


def store_snapshot(root: Path) -> dict:
    """Everything a store holds, for asserting that a failed command changed nothing."""
    import hashlib

    import duckdb

    con = duckdb.connect(str(root / "catalog.duckdb"), read_only=True)
    try:
        tables = [
            r[0]
            for r in con.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE' ORDER BY 1"
            ).fetchall()
        ]
        contents = {t: sorted(map(repr, con.execute(f'SELECT * FROM "{t}"').fetchall())) for t in tables}
    finally:
        con.close()
    files = (
        {
            str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in (root / "shards").rglob("*")
            if p.is_file()
        }
        if (root / "shards").exists()
        else {}
    )
    return {"tables": contents, "files": files}


def downgrade_to_v1(store_dir: Path) -> None:
    """Make the catalog what the first workbench wrote: schema v1, without the probe and dictionary tables."""
    import re

    import duckdb

    from workbench.store import schema

    con = duckdb.connect(str(store_dir / "catalog.duckdb"))
    later_tables = re.findall(
        r"CREATE TABLE (\w+)",
        schema.PROBE_TABLES_V2 + schema.DICTIONARY_TABLES_V3 + schema.CIRCUIT_TABLES_V4 + schema.CODEBOOK_TABLES_V5,
    )
    assert "probe_runs" in later_tables and "feature_acts" in later_tables
    con.execute("DROP TABLE dictionary_scores")  # v9
    con.execute("DROP TABLE feature_explanations")
    con.execute("DROP TABLE circuit_interventions")  # v8
    con.execute("DROP VIEW feature_acts")  # v7 made feature_acts a view over feature_rows and feature_parts
    con.execute("DROP TABLE feature_parts")
    con.execute("ALTER TABLE feature_rows RENAME TO feature_acts")
    for table in later_tables:
        con.execute(f"DROP TABLE {table}")
    for table in set(schema.PLACEMENT_TABLES_V6) - set(later_tables):  # v1 tables that v6 extended
        con.execute(f"ALTER TABLE {table} DROP COLUMN device")
        con.execute(f"ALTER TABLE {table} DROP COLUMN dtype")
    con.execute("UPDATE schema_info SET value = '1' WHERE key = 'schema_version'")
    con.close()


def planted_data(n_atoms=256, d=64, k=4, seed=0):
    """Sparse combinations of known unit atoms: the ground truth a dictionary should recover."""
    generator = torch.Generator().manual_seed(seed)
    atoms = torch.randn(n_atoms, d, generator=generator)
    atoms /= atoms.norm(dim=1, keepdim=True)

    def batches_from(step, batch=1024):
        while True:  # each batch is a function of its step, as the store's batches are
            g = torch.Generator().manual_seed(seed * 100_003 + step)
            # The k smallest of n_atoms uniforms, in ascending order: argsort(dim=1)[:, :k] picks the same atoms,
            # 15x slower (it sorts all 256 for 4), and the data generator was a quarter of each training step.
            idx = torch.rand(batch, n_atoms, generator=g).topk(k, dim=1, largest=False).indices
            coefficients = torch.rand(batch, k, generator=g) * 2 + 0.5
            x = (coefficients[..., None] * atoms[idx]).sum(1)
            yield x, x
            step += 1

    return atoms, batches_from


def kill_after_first_checkpoint(process: subprocess.Popen, checkpoint: Path, timeout: float = 120) -> None:
    """kill -9 a training command half a second after it wrote its first checkpoint (`checkpoint` appears)."""
    import signal
    import time

    deadline = time.monotonic() + timeout
    while not checkpoint.exists():
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    time.sleep(0.5)
    process.send_signal(signal.SIGKILL)
    process.wait()
