"""kill -9 at any moment, then resume; and readers see the last committed state while a harvest writes."""

import random
import signal
import subprocess
import time

import numpy as np

from workbench.harvest import HarvestConfig, run_harvest
from workbench.store import Store
from workbench.store.maintenance import verify
from workbench.store.sql import run_query

from conftest import run_cli_in_process, start_cli

HOOKS = "blocks.0.hook_out,blocks.1.mlp.hook_out"
# 100 chunks of 2 contexts. The kills below wait for shard files, not for the catalog (whose lock the writer
# holds for most of each commit, so a polling reader could wait while the harvest ran on: at 100 chunks one
# fresh-clone run finished before its kills when they waited on the catalog). Each kill now lands within a few
# chunks of a process's first new commit, so three of them cover about 25 chunks of the 100.
TOKENS = 12800
# The readers' test must see the harvest part-way at three moments. Its reader gets the catalog only between
# commits, and a reader polling without pause also holds the writer back (each waits for the other's lock), so
# it pauses between reads and runs the CLI reader beside its polling: one fresh-clone run that waited for the CLI
# reader in the loop saw only [256, 12800].
READERS_TOKENS = 12800
N_HOOKS = len(HOOKS.split(","))
SETTINGS = [
    "--model",
    "tiny",
    "--hooks",
    HOOKS,
    "--context-len",
    "64",
    "--chunk-contexts",
    "2",
    "--batch-size",
    "2",
]


def _harvest_log(store_dir, run: str):
    return store_dir.parent / f"harvest-{run}.log"


def _harvest_process(store_dir, run="k", tokens=TOKENS) -> subprocess.Popen:
    # Output to a file, not a pipe: nothing reads it while the harvest runs, and a full pipe would stall it.
    with _harvest_log(store_dir, run).open("ab") as log:  # the child keeps its own copy of the descriptor
        args = ["harvest", *SETTINGS, "--tokens", str(tokens), "--store", str(store_dir), "--run", run]
        return start_cli(*args, stdout=log, stderr=subprocess.STDOUT)


def _committed(store_dir) -> tuple[int, int]:
    """(rows, shards) the catalog has committed; (0, 0) before the harvest has created it and its tables."""
    if not (store_dir / "catalog.duckdb").exists():
        return 0, 0
    try:
        with Store(store_dir).reader() as con:
            return con.execute("SELECT coalesce(sum(n_rows), 0), count(*) FROM shards").fetchone()
    except Exception:  # the catalog may not have its tables yet
        return 0, 0


def _committed_rows(store_dir) -> int:
    return _committed(store_dir)[0]


def _shard_files(store_dir) -> int:
    """Shard files on disk, committed or not: counted without the catalog, so without waiting for its lock."""
    return sum(1 for _ in (store_dir / "shards").rglob("*.parquet")) if (store_dir / "shards").exists() else 0


def _wait_until(condition, process, log, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"harvest ended early: {log.read_text(errors='replace')[-3000:]}"
        assert time.monotonic() < deadline, "timed out waiting for the harvest"
        time.sleep(0.02)


def _activations(store, run):
    result = {}
    for hook in HOOKS.split(","):
        parts = list(store.iter_activations(run, hook))
        result[hook] = (np.concatenate([t for t, _ in parts]), np.concatenate([a for _, a in parts]))
    return result


def _assert_store_consistent(store_dir):
    """No duplicates, no partial rows, every committed shard intact, no orphan files visible to SQL."""
    store = Store.open_existing(store_dir)
    _, problems = verify(store)
    assert problems == []
    rows = run_query(
        store, "SELECT hook, count(*) AS n, count(DISTINCT token_id) AS distinct_ids FROM activations GROUP BY hook"
    ).table.to_pylist()
    for row in rows:
        assert row["n"] == row["distinct_ids"]
    with store.reader() as con:
        registered = con.execute("SELECT hook, sum(n_rows) FROM shards GROUP BY hook").fetchall()
    assert sorted((r["hook"], r["n"]) for r in rows) == sorted(registered)


def test_kill_9_at_any_moment_then_resume_loses_and_duplicates_nothing(store_dir, tmp_path):
    rng = random.Random(7)
    # Kill 1: at a random moment early on (importing, loading the model, creating the run or the first chunks).
    process = _harvest_process(store_dir)
    time.sleep(rng.uniform(0.5, 4.0))
    process.send_signal(signal.SIGKILL)
    process.wait()
    # Kills 2-4: at random moments after further commits, so the kill lands between or inside chunk commits.
    # A harvest writes chunk c + 2's files only after chunk c's commit has returned, so three new chunks of files
    # beyond the committed ones mean at least one new commit. Files left over from the last kill (at most the
    # two chunks then in flight, deleted when the next process starts) never reach that count.
    last_rows = _committed_rows(store_dir)
    for _ in range(3):
        target = _committed(store_dir)[1] + 3 * N_HOOKS
        process = _harvest_process(store_dir)
        _wait_until(lambda target=target: _shard_files(store_dir) >= target, process, _harvest_log(store_dir, "k"))
        time.sleep(rng.uniform(0.0, 0.3))
        process.send_signal(signal.SIGKILL)
        process.wait()
        rows = _committed_rows(store_dir)
        assert rows > last_rows  # nothing committed before a kill is lost, and the chunk the kill waited for is in
        last_rows = rows
        _assert_store_consistent(store_dir)
    print(f"committed before the resume: {last_rows // N_HOOKS} of {TOKENS} tokens")
    assert 0 < last_rows < N_HOOKS * TOKENS, "the kills should have interrupted the harvest part-way"

    # The resume itself runs in this process: what it must cope with is the store the kills left, not a process.
    finished = run_cli_in_process(
        "harvest", *SETTINGS, "--tokens", str(TOKENS), "--store", str(store_dir), "--run", "k"
    )
    assert finished.returncode == 0, finished.stderr
    assert "resumed after" in finished.stdout
    _assert_store_consistent(store_dir)

    # The result is exactly what an uninterrupted harvest stores. The reference commits 64 contexts at a time
    # (5 commits, not 300): its forward passes are the same batches of 2 contexts, so the floats are the same.
    reference_dir = tmp_path / "reference"
    reference_dir.mkdir()
    (reference_dir / "models").symlink_to(store_dir / "models")
    run_harvest(
        HarvestConfig(
            model="tiny",
            hooks=HOOKS.split(","),
            store=str(reference_dir),
            tokens=TOKENS,
            context_len=64,
            chunk_contexts=64,
            batch_size=2,
            run="k",
        ),
        progress=False,
    )
    resumed, reference = _activations(Store(store_dir), "k"), _activations(Store(reference_dir), "k")
    for hook in HOOKS.split(","):
        assert (resumed[hook][0] == np.arange(TOKENS)).all()
        np.testing.assert_array_equal(resumed[hook][1], reference[hook][1])
    # Files left by the killed processes were cleaned up: every file on disk is a committed shard.
    on_disk = {p.relative_to(store_dir).as_posix() for p in (store_dir / "shards").rglob("*") if p.is_file()}
    assert on_disk == {s.path for s in Store(store_dir).shards()}


def test_readers_see_the_last_committed_state_while_a_harvest_writes(store_dir):
    process = _harvest_process(store_dir, run="live", tokens=READERS_TOKENS)
    try:
        _wait_until(lambda: _committed_rows(store_dir) > 0, process, _harvest_log(store_dir, "live"))
        store = Store.open_existing(store_dir)
        seen = []
        cli_reader = None
        while process.poll() is None:
            table = run_query(
                store,
                """
                SELECT (SELECT count(*) FROM activations WHERE hook = 'blocks.0.hook_out') AS visible,
                       (SELECT coalesce(sum(n_rows), 0) FROM shards WHERE hook = 'blocks.0.hook_out') AS committed
            """,
            ).table.to_pylist()[0]
            assert table["visible"] == table["committed"]  # a consistent snapshot: no partial chunk is visible
            assert table["visible"] % 128 == 0  # whole chunks only (2 contexts x 64 tokens)
            seen.append(table["visible"])
            if cli_reader is None and len(seen) > 3:  # `workbench sql` reads beside this loop, while the harvest writes
                query = "SELECT count(*) FROM activations"
                cli_reader = start_cli(
                    "sql", str(store_dir), query, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
                )
            time.sleep(0.05)  # let the writer in between reads
        assert process.returncode == 0, _harvest_log(store_dir, "live").read_text(errors="replace")[-3000:]
    finally:
        if process.poll() is None:
            process.kill()
    assert cli_reader is not None, f"the harvest ended before the CLI reader started; saw {seen}"
    cli_out, cli_err = cli_reader.communicate(timeout=120)
    print(f"{len(seen)} reads saw {len(set(seen))} committed states")
    assert seen == sorted(seen), "committed state never goes backwards"
    assert len(set(seen)) >= 3, f"expected to observe the harvest in progress, saw {sorted(set(seen))}"
    assert seen[-1] <= READERS_TOKENS
    assert cli_reader.returncode == 0 and "count_star()" in cli_out, cli_err
