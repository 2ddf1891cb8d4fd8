"""Read-only SQL: what it answers, what it refuses, and its limits."""

import pytest

from workbench.errors import ReadOnlySqlError
from workbench.harvest import HarvestConfig, run_harvest
from workbench.store import Store
from workbench.store.sql import run_query

from conftest import store_snapshot


@pytest.fixture(scope="module")
def store(tmp_path_factory, models_dir):
    """One harvested store for the module: every test only reads it, and each refused write is checked against
    a snapshot, so a write that got through would fail its own test."""
    root = tmp_path_factory.mktemp("sql") / "store"
    root.mkdir()
    (root / "models").symlink_to(models_dir, target_is_directory=True)
    run_harvest(
        HarvestConfig(model="tiny", hooks=["blocks.1.hook_out"], store=str(root), tokens=1024, context_len=64, run="q"),
        progress=False,
    )
    return Store.open_existing(root)


def test_select_show_describe_and_explain_work(store):
    assert run_query(store, "SELECT count(*) AS n FROM activations").table.to_pylist() == [{"n": 1024}]
    tables = {r["name"] for r in run_query(store, "SHOW TABLES").table.to_pylist()}
    assert {"runs", "documents", "tokens", "hook_points", "shards", "schema_info", "activations"} <= tables
    columns = [r["column_name"] for r in run_query(store, "DESCRIBE activations").table.to_pylist()]
    assert columns == ["run", "hook", "token_id", "act"]
    assert run_query(store, "EXPLAIN SELECT * FROM runs").table.num_rows >= 1
    top = run_query(
        store,
        "WITH a AS (SELECT token_id, list_max(act) AS m FROM activations) "
        "SELECT token_id FROM a ORDER BY m DESC LIMIT 3",
    ).table
    assert top.num_rows == 3


@pytest.mark.parametrize(
    "statement",
    [
        "DROP TABLE runs",
        "DELETE FROM tokens",
        "INSERT INTO runs SELECT * FROM runs",
        "UPDATE runs SET status = 'x'",
        "CREATE TABLE t AS SELECT 1",
        "COPY runs TO '/tmp/leak.csv'",
        "COPY (SELECT 1) TO 'shards/new.csv'",
        "ATTACH '/tmp/other.duckdb' AS other",
        "INSTALL httpfs",
        "LOAD httpfs",
        "SET enable_external_access = true",
        "PRAGMA enable_profiling",
        "SELECT 1; DROP TABLE runs",
        "SELECT 1; SELECT 2",
        "CHECKPOINT",
    ],
)
def test_writes_and_escapes_are_refused(store, statement):
    before = store_snapshot(store.root)
    with pytest.raises(ReadOnlySqlError) as err:
        run_query(store, statement)
    assert "read-only" in str(err.value) or "exactly one statement" in str(err.value)
    assert store_snapshot(store.root) == before


@pytest.mark.parametrize(
    "statement",
    [
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM read_text('/etc/hostname')",
        "SELECT * FROM read_text('shards/../catalog.duckdb')",
        "SELECT * FROM read_parquet('/tmp/*.parquet')",
        "SELECT * FROM read_blob('../../../etc/passwd')",
        "SELECT * FROM glob('/*')",
    ],
)
def test_reading_files_outside_the_store_is_refused(store, statement):
    with pytest.raises(ReadOnlySqlError, match="Refused|Permission|disabled"):
        run_query(store, statement)


def test_row_limit_cuts_big_results(store):
    result = run_query(store, "SELECT * FROM tokens", max_rows=100)
    assert result.table.num_rows == 100 and result.truncated
    assert not run_query(store, "SELECT * FROM tokens", max_rows=5000).truncated


def test_long_queries_are_interrupted(store):
    with pytest.raises(ReadOnlySqlError, match="time limit"):
        run_query(
            store,
            "SELECT count(*) FROM range(100000000) a, range(1000) b WHERE a.range * b.range % 7 = 3",
            timeout_s=0.5,
        )


def test_syntax_errors_are_reported(store):
    with pytest.raises(ReadOnlySqlError, match="does not parse"):
        run_query(store, "SELEC 1")


def test_every_example_query_runs_and_finds_rows_on_a_full_store(app_store):
    """The SQL console offers these; each must parse on the installed DuckDB and find the data it names.

    app_store has every table filled (harvest, dictionaries, probes, circuits, codebooks), so an empty result
    means the query is wrong, not the store."""
    from workbench.store.sql import EXAMPLE_QUERIES

    store = Store.open_existing(app_store)
    assert len(EXAMPLE_QUERIES) >= 13
    for title, sql in EXAMPLE_QUERIES.items():
        result = run_query(store, sql, max_rows=100)  # raises ReadOnlySqlError with DuckDB's message if it fails
        assert result.table.num_rows > 0, title
