"""Training on a real store: registration, kill -9 and exact resume, and bad input."""

import shutil
import subprocess
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from workbench.activation_batches import ActivationBatches
from workbench.dictionaries import load_dictionary
from workbench.dictionaries.base import DictionaryError
from workbench.errors import StoreError
from workbench.harvest import HarvestConfig, run_harvest
from workbench.metrics import FVUAccumulator
from workbench.store import Store
from workbench.store.shards import ShardBuilder
from workbench.train import TrainConfig, run_train

from conftest import kill_after_first_checkpoint, run_cli_in_process, start_cli, store_snapshot

TRAIN_ARGS = ["--hook", "blocks.1.hook_out", "--k", "8", "--latents", "128", "--batch-size", "512"]


@pytest.fixture(scope="module")
def harvested(tmp_path_factory, models_dir):
    """Run 'h' harvested once for the module, and the same store with dictionary 'd' trained on it (_config's)."""
    root = tmp_path_factory.mktemp("harvested") / "store"
    root.mkdir()
    (root / "models").symlink_to(models_dir, target_is_directory=True)
    run_harvest(
        HarvestConfig(model="tiny", hooks=["blocks.1.hook_out"], store=str(root), tokens=8192, run="h"), progress=False
    )
    trained = root.parent / "trained"
    shutil.copytree(root, trained, symlinks=True)
    run_train(_config(Store.open_existing(trained)), progress=False)
    return root, trained


def _copy(template, store_dir) -> Store:
    """A test's own copy of a prepared store: tests change their store, and the template stays as it was."""
    # store_dir already links models/ to the session's models; the template's own link is left out.
    shutil.copytree(
        template,
        store_dir,
        symlinks=True,
        dirs_exist_ok=True,
        ignore=lambda folder, names: ["models"] if Path(folder) == Path(template) else [],
    )
    return Store.open_existing(store_dir)


@pytest.fixture
def store(store_dir, harvested):
    return _copy(harvested[0], store_dir)


@pytest.fixture
def trained_store(store_dir, harvested):
    """As `store`, with 'd' already trained: run_train(_config(store)) finds it complete and returns its name."""
    return _copy(harvested[1], store_dir)


def _config(store, **overrides):
    settings = dict(
        store=str(store.root),
        hook="blocks.1.hook_out",
        k=8,
        latents=128,
        tokens=60_000,
        batch_size=512,
        name="d",
        checkpoint_seconds=0.5,
    )
    settings.update(overrides)
    return TrainConfig(**settings)


def test_trained_dictionary_is_registered_and_reconstructs(store):
    name = run_train(_config(store), progress=False).dictionary.name
    with store.reader() as con:
        row = con.execute(
            "SELECT arch, run, hook, status, steps_done, tokens_done, train_l0, path FROM dictionaries WHERE name = ?",
            [name],
        ).fetchone()
    arch, run, hook, status, steps, tokens, train_l0, path = row
    assert (arch, run, hook, status, steps, tokens) == ("topk", "h", "blocks.1.hook_out", "complete", 117, 117 * 512)
    assert train_l0 <= 8
    model = load_dictionary(store.root / path, expected_arch="topk")
    fvu = FVUAccumulator()
    for _, acts in store.iter_activations("h", "blocks.1.hook_out"):
        x = torch.from_numpy(acts)
        fvu.add(x, model.decode(model.encode(x)))
    assert fvu.value() < 0.6  # a random decoder gives FVU >= 1
    before = store_snapshot(store.root)
    assert run_train(_config(store), progress=False).dictionary.name == name  # already complete: nothing changes
    assert store_snapshot(store.root) == before


def test_batches_skip_bos_and_cover_every_row_once_per_epoch(store):
    data = ActivationBatches(store, "h", ["blocks.1.hook_out"], batch_size=1, seed=3)
    rows = [x for x, _ in zip((b["blocks.1.hook_out"] for b in data.iterate()), range(data.batches_per_epoch()))]
    assert len(rows) == 8192 - 64  # 64 contexts of 128, BOS rows left out
    stored = np.concatenate([a for _, a in store.iter_activations("h", "blocks.1.hook_out")])
    stored = stored[np.arange(len(stored)) % 128 != 0]
    seen = np.concatenate([r.numpy() for r in rows])
    assert np.array_equal(np.sort(seen, axis=0), np.sort(stored, axis=0))


def test_kill_9_during_training_then_resume_is_exact(store):
    command = [
        "train",
        "--store",
        str(store.root),
        *TRAIN_ARGS,
        "--tokens",
        "400000",
        "--name",
        "killed",
        "--checkpoint-seconds",
        "0.3",
    ]
    process = start_cli(*command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    checkpoint = store.root / "dictionaries" / "killed" / "checkpoint" / "state.json"
    kill_after_first_checkpoint(process, checkpoint)
    resumed = run_cli_in_process(*command)  # the same command; the resume needs no process of its own
    assert resumed.returncode == 0, resumed.stderr
    run_train(_config(store, tokens=400_000, name="straight"), progress=False)
    a = load_dictionary(store.root / "dictionaries" / "killed")
    b = load_dictionary(store.root / "dictionaries" / "straight")
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key


def test_bad_training_input_is_reported_and_changes_nothing(store):
    before = store_snapshot(store.root)
    with pytest.raises(DictionaryError, match="No run .* has hook 'blocks.0.hook_out'.*workbench harvest"):
        run_train(_config(store, hook="blocks.0.hook_out"), progress=False)
    with pytest.raises(DictionaryError, match="k must be between 1"):
        run_train(_config(store, k=128), progress=False)
    # A batch larger than what one buffer of shards holds would never be drawn: refused, not an endless wait.
    with pytest.raises(StoreError, match="--batch-size 1000000 is larger than the .* rows.*Lower --batch-size"):
        run_train(_config(store, batch_size=1_000_000, tokens=2_000_000), progress=False)
    assert store_snapshot(store.root) == before


def test_nan_in_stored_activations_is_located(store):
    record = store.shards("h", "blocks.1.hook_out")[0]
    token_ids, acts = next(store.iter_activations("h", "blocks.1.hook_out"))
    acts = acts.copy()
    acts[5, 3] = np.nan
    builder = ShardBuilder()  # rewrite the shard as a harvest that produced a NaN would have
    builder.start(acts.nbytes + token_ids.nbytes)
    builder.append(token_ids, acts)
    info = builder.finish(store.root / record.path)
    with store.transaction() as con:
        con.execute(
            "UPDATE shards SET sha256 = ?, n_bytes = ? WHERE path = ?", [info.sha256, info.n_bytes, record.path]
        )
    with pytest.raises(
        StoreError,
        match=f"Non-finite activation in run 'h' at hook 'blocks.1.hook_out': token_id {int(token_ids[5])}, dim 3",
    ):
        run_train(_config(store), progress=False)


@pytest.mark.parametrize("skip", [False, True])
def test_transcoder_predicts_the_mlp_output(store_dir, skip):
    run_harvest(
        HarvestConfig(
            model="tiny",
            hooks=["blocks.1.mlp.hook_in", "blocks.1.mlp.hook_out"],
            store=str(store_dir),
            tokens=8192,
            run="m",
        ),
        progress=False,
    )
    store = Store.open_existing(store_dir)
    name = run_train(
        TrainConfig(
            store=str(store_dir),
            hook="blocks.1.mlp.hook_in",
            hook_out="blocks.1.mlp.hook_out",
            skip_connection=skip,
            k=8,
            latents=256,
            tokens=200_000,
            batch_size=1024,
        ),
        progress=False,
    ).dictionary.name
    with store.reader() as con:
        path, hook_out = con.execute("SELECT path, hook_out FROM dictionaries WHERE name = ?", [name]).fetchone()
    assert hook_out == "blocks.1.mlp.hook_out" and "transcoder" in name
    model = load_dictionary(store.root / path)
    fvu = FVUAccumulator()
    inputs = store.iter_activations("m", "blocks.1.mlp.hook_in")
    for (_, x), (_, y) in zip(inputs, store.iter_activations("m", "blocks.1.mlp.hook_out")):
        fvu.add(torch.from_numpy(y), model.reconstruct(torch.from_numpy(x)))
    assert (
        fvu.value() < 0.8
    )  # against the MLP output, raw activations, BOS rows included; predicting the mean gives 1.0


def test_encode_stores_exactly_the_nonzero_latents_and_their_statistics(trained_store):
    store = trained_store
    from workbench.encode import EncodeConfig, run_encode

    name = run_train(_config(store), progress=False).dictionary.name
    encoded = run_encode(EncodeConfig(store=str(store.root), dictionary=name), progress=False)
    n_tokens, n_rows = encoded.n_tokens, encoded.n_rows
    model = load_dictionary(store.root / "dictionaries" / name)
    token_ids, acts = map(np.concatenate, zip(*store.iter_activations("h", "blocks.1.hook_out")))
    keep = token_ids % 128 != 0
    direct = model.encode(torch.from_numpy(acts[keep])).detach()
    assert n_tokens == int(keep.sum()) and n_rows == int((direct != 0).sum())
    with store.reader() as con:
        top = con.execute(
            "SELECT token_id, value FROM feature_acts WHERE dictionary = ? AND feature = 3 ORDER BY value DESC LIMIT 5",
            [name],
        ).fetchall()
        stats = con.execute(
            "SELECT n_active, density, max FROM feature_stats WHERE dictionary = ? AND feature = 3", [name]
        ).fetchone()
        physical = [
            r[0] for r in con.execute("SELECT feature FROM feature_acts WHERE dictionary = ?", [name]).fetchall()
        ]
    column = direct[:, 3].numpy()
    expected = sorted(zip(token_ids[keep].tolist(), column.tolist()), key=lambda r: -r[1])[:5]
    assert [t for t, _ in top] == [t for t, _ in expected]
    np.testing.assert_allclose([v for _, v in top], [v for _, v in expected], rtol=1e-6)
    assert stats[0] == int((column != 0).sum()) and stats[1] == pytest.approx(stats[0] / n_tokens)
    assert stats[2] == pytest.approx(column.max(), rel=1e-6)
    assert physical == sorted(physical)  # stored in feature order: a feature's rows are contiguous


def test_encoding_an_unknown_or_unfinished_dictionary_is_refused(store):
    from workbench.encode import EncodeConfig, run_encode

    with pytest.raises(DictionaryError, match="No dictionary 'nope'.*train one first"):
        run_encode(EncodeConfig(store=str(store.root), dictionary="nope"), progress=False)


def test_eval_metrics_agree_with_direct_computation_and_across_backends(trained_store):
    store = trained_store
    from workbench.evaluate import EvalConfig, next_token_ce, run_eval
    from workbench.models import load_hf_model

    name = run_train(_config(store), progress=False).dictionary.name
    results = {
        b: asdict(run_eval(EvalConfig(store=str(store.root), dictionary=name, ce_tokens=512, backend=b)).evaluation)
        for b in ("nnsight", "transformerlens")
    }
    r = results["nnsight"]
    model = load_dictionary(store.root / "dictionaries" / name)
    token_ids, acts = map(np.concatenate, zip(*store.iter_activations("h", "blocks.1.hook_out")))
    x = torch.from_numpy(acts[token_ids % 128 != 0])
    direct = FVUAccumulator()
    direct.add(x, model.reconstruct(x).detach())
    assert r["fvu"] == pytest.approx(direct.value(), rel=1e-6) and r["n_tokens"] == len(x) and r["l0"] <= 8
    hf_model, _ = load_hf_model(store.root / "models" / "tiny")
    with store.reader() as con:
        ids = con.execute(
            "SELECT vocab_id FROM tokens WHERE run = 'h' AND context_id < 4 ORDER BY token_id"
        ).fetchnumpy()["vocab_id"]
    ids = torch.from_numpy(ids.astype(np.int64).reshape(4, 128))
    with torch.no_grad():
        assert r["ce_clean"] == pytest.approx(next_token_ce(hf_model(ids).logits, ids).mean().item(), rel=1e-5)
    assert r["kl"] >= 0 and r["n_ce_tokens"] == 4 * 127
    for key in ("ce_clean", "ce_spliced", "ce_zero_ablation", "kl", "fvu"):
        assert results["transformerlens"][key] == pytest.approx(r[key], rel=1e-4, abs=1e-6), key
    with store.reader() as con:
        assert con.execute("SELECT count(*) FROM dictionary_evals WHERE dictionary = ?", [name]).fetchone()[0] == 1
    from workbench.store.maintenance import summarize

    listed = summarize(store)["dictionaries"].to_pylist()
    assert [(d["name"], d["fvu"]) for d in listed] == [(name, round(results["transformerlens"]["fvu"], 4))]


@pytest.mark.slow
def test_sae_on_smollm2_splices_with_a_meaningful_ce_loss_score(store_dir):
    from workbench.evaluate import EvalConfig, run_eval

    run_harvest(
        HarvestConfig(model="smollm2-135m", hooks=["blocks.6.hook_out"], store=str(store_dir), tokens=16384, run="s"),
        progress=False,
    )
    name = run_train(
        TrainConfig(
            store=str(store_dir), hook="blocks.6.hook_out", k=32, latents=2304, tokens=300_000, batch_size=2048
        ),
        progress=False,
    ).dictionary.name
    r = asdict(run_eval(EvalConfig(store=str(store_dir), dictionary=name, ce_tokens=1024)).evaluation)
    print(
        f"SmolLM2 layer-6 TopK (300k tokens): FVU {r['fvu']:.3f}, CE-loss score {r['ce_loss_score']:.3f}, "
        f"delta CE {r['delta_ce']:.3f}, KL {r['kl']:.3f}"
    )
    assert r["ce_zero_ablation"] > r["ce_clean"] + 1  # ablating the residual destroys the model's predictions
    assert 0.5 < r["ce_loss_score"] <= 1.05 and r["fvu"] < 0.5
