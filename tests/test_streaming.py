"""Streaming training: dictionaries trained on live activations, without shards, resumed exactly after kill -9."""

import subprocess

import numpy as np
import torch

from workbench.dictionaries import load_dictionary
from workbench.harvest import HarvestConfig, run_harvest
from workbench.hooks import parse_hooks
from workbench.metrics import FVUAccumulator
from workbench.models import load_hf_model, make_backend
from workbench.store import Store
from workbench.store.records import HookPointRecord, RunRecord, read_all, read_one
from workbench.streaming import STREAMED, LiveActivations
from workbench.train import TrainConfig, run_train

from conftest import kill_after_first_checkpoint, run_cli_in_process, start_cli

STREAM_ARGS = ["--model", "tiny", "--hook", "blocks.1.hook_out", "--k", "8", "--latents", "128", "--batch-size", "254"]


SETTINGS = dict(
    hook=["blocks.0.hook_out", "blocks.1.hook_out"], k=8, latents=128, tokens=254 * 40, batch_size=254, lr=4e-3
)


def _train(store_dir, **overrides):
    settings = SETTINGS | dict(store=str(store_dir), model="tiny", stream_tokens=4096, name="live")
    return run_train(TrainConfig(**(settings | overrides)), progress=False)


def test_streaming_trains_every_hook_from_one_pass_and_records_the_corpus_slice(store_dir, tiny_dir):
    result = _train(store_dir)
    assert [d.hook for d in result.dictionaries] == ["blocks.0.hook_out", "blocks.1.hook_out"]
    store = Store.open_existing(store_dir)
    run = result.dictionaries[0].run
    with store.reader() as con:
        record = read_one(con, RunRecord, run=run)
        points = read_all(con, HookPointRecord, run=run)
    assert record is not None and record.status == STREAMED and record.n_tokens == 4096
    assert points == [] and store.shards(run, "blocks.1.hook_out") == []  # nothing stored but the slice
    # The same training from stored shards of the same model and corpus reaches the same quality, measured on the
    # same stored activations (the batches differ: whole contexts here, rows shuffled across shards there).
    harvest = run_harvest(
        HarvestConfig(
            model="tiny", hooks=["blocks.0.hook_out", "blocks.1.hook_out"], store=str(store_dir), tokens=4096
        ),
        progress=False,
    )
    stored = run_train(TrainConfig(**(SETTINGS | {"store": str(store_dir), "name": "stored"})), progress=False)
    for streamed, from_shards in zip(result.dictionaries, stored.dictionaries):
        assert streamed.status == "complete" and streamed.steps_done == 40 and streamed.tokens_done == 40 * 254
        fvus = []
        for dictionary in (streamed, from_shards):
            model, fvu = load_dictionary(store.root / dictionary.path), FVUAccumulator()
            for token_ids, acts in store.iter_activations(harvest.run, dictionary.hook):
                x = torch.from_numpy(acts[token_ids % 128 != 0])
                fvu.add(x, model.reconstruct(x).detach())
            fvus.append(fvu.value())
        assert fvus[0] < 0.6 and abs(fvus[0] - fvus[1]) < 0.1 * fvus[1], fvus  # the mean alone scores 1.0
    # The live batches are the model's activations on the recorded contexts, BOS rows left out.
    hf_model, tokenizer = load_hf_model(tiny_dir)
    hooks = parse_hooks(["blocks.1.hook_out"], 2)
    contexts = store.contexts(run)
    live = LiveActivations(make_backend("nnsight", hf_model, tokenizer), contexts, hooks, 254, 0, torch.device("cpu"))
    batch = next(live.iterate(3))["blocks.1.hook_out"]
    order = np.random.default_rng([0, 0]).permutation(len(contexts))
    expected = make_backend("nnsight", hf_model, tokenizer).capture(torch.from_numpy(contexts[order[6:8]]), hooks)[
        hooks[0]
    ]
    torch.testing.assert_close(batch, expected[:, 1:].reshape(-1, expected.shape[-1]))


def test_streamed_transcoders_read_and_predict_the_hooks_they_were_given(store_dir):
    """Several streamed transcoders: the live batches come in forward order (0 in, 0 out, 1 in, 1 out), and each
    transcoder still reads its own --hook and predicts its own --out (a regression: they were paired by position)."""
    ins, outs = ["blocks.0.mlp.hook_in", "blocks.1.mlp.hook_in"], ["blocks.0.mlp.hook_out", "blocks.1.mlp.hook_out"]
    result = _train(store_dir, hook=ins, hook_out=outs, tokens=254 * 4, name="pairs")
    assert [(d.hook, d.hook_out) for d in result.dictionaries] == list(zip(ins, outs))


def test_streaming_resumes_exactly_after_kill_9(store_dir):
    command = ["train", "--store", str(store_dir), *STREAM_ARGS, "--tokens", "30000", "--stream-tokens", "4096"]
    killed = [*command, "--name", "killed", "--checkpoint-seconds", "0.3"]
    process = start_cli(*killed, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    checkpoint = store_dir / "dictionaries" / "killed" / "checkpoint" / "state.json"
    kill_after_first_checkpoint(process, checkpoint)
    resumed = run_cli_in_process(*killed)
    assert resumed.returncode == 0, resumed.stderr
    straight = run_cli_in_process(*command, "--name", "straight")
    assert straight.returncode == 0, straight.stderr
    a = load_dictionary(store_dir / "dictionaries" / "killed")
    b = load_dictionary(store_dir / "dictionaries" / "straight")
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
