"""Shared fixtures: the tiny model is built once per session; each test gets its own real store.

Tests marked `slow` run on the real SmolLM2-135M and are skipped unless pytest gets --slow
(`make test-slow`).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from workbench.models import resolve_model_dir

REPO = Path(__file__).resolve().parent.parent


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true", help="also run the slow tests on the real SmolLM2-135M model")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--slow"):
        return
    skip = pytest.mark.skip(reason="slow test on SmolLM2: run with --slow (make test-slow)")
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


def run_cli(*args: str, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """Run `workbench ...` as a real subprocess, as a user would."""
    return subprocess.run([sys.executable, "-m", "workbench.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, **kwargs)


def store_snapshot(root: Path) -> dict:
    """Everything a store holds, for asserting that a failed command changed nothing."""
    import hashlib

    import duckdb

    con = duckdb.connect(str(root / "catalog.duckdb"), read_only=True)
    try:
        tables = [r[0] for r in con.execute("SELECT table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE' ORDER BY 1").fetchall()]
        contents = {t: sorted(map(repr, con.execute(f'SELECT * FROM "{t}"').fetchall())) for t in tables}
    finally:
        con.close()
    files = {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in (root / "shards").rglob("*") if p.is_file()} if (root / "shards").exists() else {}
    return {"tables": contents, "files": files}


def downgrade_to_v1(store_dir: Path) -> None:
    """Make the catalog what the first workbench wrote: schema v1, without the probe and dictionary tables."""
    import re

    import duckdb

    from workbench.store import schema

    con = duckdb.connect(str(store_dir / "catalog.duckdb"))
    later_tables = re.findall(r"CREATE TABLE (\w+)", schema.PROBE_TABLES_V2 + schema.DICTIONARY_TABLES_V3
                              + schema.CIRCUIT_TABLES_V4 + schema.CODEBOOK_TABLES_V5)
    assert "probe_runs" in later_tables and "feature_acts" in later_tables
    for table in later_tables:
        con.execute(f"DROP TABLE {table}")
    con.execute("UPDATE schema_info SET value = '1' WHERE key = 'schema_version'")
    con.close()
