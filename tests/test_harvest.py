"""Harvest into a real store with the tiny model: the stored numbers, their provenance, and bad input."""

import json

import numpy as np
import pytest
import torch

from workbench.errors import CorpusError, ModelLoadError, RunConflictError, StoreError, UnknownHookError, WorkbenchError
from workbench.harvest import HarvestConfig, run_harvest
from workbench.hooks import parse_hooks
from workbench.models import load_hf_model, make_backend
from workbench.store import Store
from workbench.store.sql import run_query

from conftest import run_cli, run_cli_in_process, store_snapshot

HOOKS = ["blocks.1.hook_out", "blocks.0.mlp.hook_in", "blocks.0.hook_mlp_out"]


def _config(store_dir, **overrides):
    settings = dict(
        model="tiny",
        hooks=HOOKS,
        store=str(store_dir),
        tokens=3000,
        context_len=64,
        batch_size=4,
        chunk_contexts=8,
        run="t",
    )
    settings.update(overrides)
    return HarvestConfig(**settings)


@pytest.mark.parametrize("backend", ["transformerlens", "nnsight"])
def test_stored_activations_equal_a_direct_forward_pass(store_dir, tiny_dir, backend):
    result = run_harvest(_config(store_dir, backend=backend), progress=False)
    assert result.n_tokens == 47 * 64 and result.tokens_harvested_now == result.n_tokens
    store = Store.open_existing(store_dir)
    with store.reader() as con:
        ids = con.execute("SELECT vocab_id FROM tokens WHERE run='t' ORDER BY token_id").fetchnumpy()["vocab_id"]
    contexts = torch.from_numpy(ids.astype(np.int64).reshape(-1, 64))
    hf_model, tokenizer = load_hf_model(tiny_dir)
    hooks = parse_hooks(HOOKS, 2)
    expected = make_backend(backend, hf_model, tokenizer).capture(contexts[:10], hooks)
    for hook in hooks:
        shards = list(store.iter_activations("t", hook.name))
        token_ids = np.concatenate([t for t, _ in shards])
        acts = np.concatenate([a for _, a in shards])
        assert (token_ids == np.arange(result.n_tokens)).all()  # every token once, in order
        np.testing.assert_allclose(acts[:640], expected[hook].reshape(-1, 64).numpy(), atol=1e-6)


@pytest.mark.parametrize("device_map", ["auto", '{"": "cpu"}'])
def test_a_model_spread_by_a_device_map_harvests_the_same_activations(store_dir, device_map):
    """--device-map takes accelerate's path (from_pretrained(device_map=...)); with no GPU here every module lands
    on the CPU, so the shards must equal a plain harvest. Spreading over several GPUs is not tested here."""
    run_harvest(_config(store_dir, tokens=1024, run="plain"), progress=False)
    run_harvest(_config(store_dir, tokens=1024, run="mapped", device_map=device_map), progress=False)
    store = Store.open_existing(store_dir)
    for hook in parse_hooks(HOOKS, 2):
        plain = np.concatenate([a for _, a in store.iter_activations("plain", hook.name)])
        mapped = np.concatenate([a for _, a in store.iter_activations("mapped", hook.name)])
        np.testing.assert_array_equal(plain, mapped)


def test_rows_trace_back_to_their_text_through_sql(store_dir):
    run_harvest(_config(store_dir), progress=False)
    store = Store.open_existing(store_dir)
    table = run_query(
        store,
        """
        SELECT t.token, t.position, t.doc_id, substr(d.text, t.char_start + 1, t.char_end - t.char_start) AS span
        FROM activations a JOIN tokens t USING (run, token_id) LEFT JOIN documents d USING (run, doc_id)
        WHERE a.hook = 'blocks.1.hook_out'""",
    ).table.to_pylist()
    assert len(table) == 47 * 64
    for row in table:
        if row["position"] == 0:
            assert row["doc_id"] is None and row["token"] == "<|im_start|>"
        elif row["doc_id"] is not None:
            assert row["token"] == row["span"]


def test_catalog_records_provenance_and_hook_metadata(store_dir):
    run_harvest(_config(store_dir), progress=False)
    with Store.open_existing(store_dir).reader() as con:
        run = con.execute(
            "SELECT model, backend, hooks, corpus, status, package_version, config, n_layers, d_model "
            "FROM runs WHERE run='t'"
        ).fetchone()
        hook_rows = con.execute("SELECT hook, layer, kind, d FROM hook_points ORDER BY layer, hook").fetchall()
        shard_rows = con.execute("SELECT count(*), sum(n_rows) FROM shards").fetchone()
    model, backend, hooks, corpus, status, version, config, n_layers, d_model = run
    assert (model, backend, corpus, status, n_layers, d_model) == ("tiny", "nnsight", "default", "complete", 2, 64)
    assert hooks == [
        "blocks.0.mlp.hook_in",
        "blocks.0.mlp.hook_out",
        "blocks.1.hook_out",
    ]  # alias mapped, forward order
    assert json.loads(config)["chunk_contexts"] == 8 and version
    assert hook_rows == [
        ("blocks.0.mlp.hook_in", 0, "mlp.hook_in", 64),
        ("blocks.0.mlp.hook_out", 0, "mlp.hook_out", 64),
        ("blocks.1.hook_out", 1, "hook_out", 64),
    ]
    assert shard_rows == (3 * 6, 3 * 47 * 64)  # 47 contexts in chunks of 8 -> 6 chunks per hook


def test_repeating_a_finished_run_is_a_no_op(store_dir):
    run_harvest(_config(store_dir), progress=False)
    before = store_snapshot(store_dir)
    result = run_harvest(_config(store_dir, batch_size=2), progress=False)  # batch size may change on resume
    assert result.tokens_harvested_now == 0
    assert store_snapshot(store_dir) == before


def test_hook_set_different_from_existing_run_is_refused(store_dir):
    run_harvest(_config(store_dir), progress=False)
    before = store_snapshot(store_dir)
    with pytest.raises(RunConflictError, match="(?s)hooks: stored .*Choose a new --run name"):
        run_harvest(_config(store_dir, hooks=["blocks.1.hook_out"]), progress=False)
    with pytest.raises(RunConflictError, match="tokens: stored 3000, now 5000"):
        run_harvest(_config(store_dir, tokens=5000), progress=False)
    assert store_snapshot(store_dir) == before


def test_bad_input_names_the_problem_and_changes_nothing(store_dir, tmp_path):
    run_harvest(_config(store_dir), progress=False)
    before = store_snapshot(store_dir)
    with pytest.raises(UnknownHookError, match="Valid hook points"):
        run_harvest(_config(store_dir, run="u", hooks=["blocks.1.resid"]), progress=False)
    with pytest.raises(UnknownHookError, match="2 layers"):
        run_harvest(_config(store_dir, run="u", hooks=["blocks.7.hook_out"]), progress=False)
    with pytest.raises(ModelLoadError, match="(?s)not a local folder.*--model DIR"):
        run_harvest(_config(store_dir, run="u", model="no-such-org/no-such-model-xyz"), progress=False)
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(CorpusError, match="fewer than one context"):
        run_harvest(_config(store_dir, run="u", corpus=str(tmp_path / "empty.txt")), progress=False)
    with pytest.raises(StoreError, match="Run name"):
        run_harvest(_config(store_dir, run="../escape"), progress=False)
    assert store_snapshot(store_dir) == before


def test_unwritable_store_directory_is_reported(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError, match="Cannot write to the store directory"):
        run_harvest(_config(blocker / "store"), progress=False)


def test_cli_harvest_info_and_sql(store_dir):
    done = run_cli(
        "harvest",
        "--model",
        "tiny",
        "--hooks",
        "blocks.1.hook_out",
        "--tokens",
        "1024",
        "--store",
        str(store_dir),
        "--run",
        "cli",
        "--chunk-contexts",
        "4",
    )
    assert done.returncode == 0, done.stderr
    assert "harvested 1024 tokens" in done.stdout
    info = run_cli("store", "info", str(store_dir))
    assert (
        info.returncode == 0
        and "cli" in info.stdout
        and "blocks.1.hook_out" in info.stdout
        and "complete" in info.stdout
    )
    sql = run_cli("sql", str(store_dir), "SELECT hook, count(*) AS n FROM activations GROUP BY hook")
    assert sql.returncode == 0 and "1024" in sql.stdout
    # In this process: an exception that escaped main() would fail the test outright, as a traceback would.
    bad = run_cli_in_process("harvest", "--model", "tiny", "--hooks", "blocks.1.hook_outt", "--store", str(store_dir))
    assert bad.returncode == 2 and "Unknown hook 'blocks.1.hook_outt'" in bad.stderr and "Traceback" not in bad.stderr


def test_cli_help_teaches():
    top = run_cli("--help")
    assert top.returncode == 0 and "harvest" in top.stdout and "typical session" in top.stdout
    sub = run_cli("harvest", "--help")
    assert "resumes" in sub.stdout and "blocks.i.mlp.hook_in" in sub.stdout and "smollm2-135m" in sub.stdout


@pytest.mark.parametrize("size", ["tokens", "batch_size", "chunk_contexts"])
def test_non_positive_sizes_are_refused(store_dir, size):
    with pytest.raises(WorkbenchError, match="--tokens, --batch-size and --chunk-contexts must be positive"):
        _config(store_dir, **{size: 0})
