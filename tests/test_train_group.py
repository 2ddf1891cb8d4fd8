"""Grouped training: several hooks and k/width sweeps from one read of the data, each dictionary as if alone."""

import pytest
import torch

from workbench.activation_batches import ActivationBatches
from workbench.dictionaries import load_dictionary
from workbench.errors import DictionaryError
from workbench.harvest import HarvestConfig, run_harvest
from workbench.store import Store
from workbench.train import TrainConfig, run_train

from conftest import run_cli_in_process, store_snapshot

HOOKS = ["blocks.0.hook_out", "blocks.1.hook_out"]


@pytest.fixture
def store(store_dir) -> Store:
    run_harvest(
        HarvestConfig(model="tiny", hooks=HOOKS, store=str(store_dir), tokens=4096, run="g", chunk_contexts=8),
        progress=False,
    )
    return Store.open_existing(store_dir)


def _train(store, **overrides):
    settings = dict(store=str(store.root), hook=HOOKS, k=[4, 8], latents=[64], tokens=256 * 24, batch_size=256)
    return run_train(TrainConfig(**(settings | overrides)), progress=False)


def test_a_dictionary_trained_in_a_group_equals_one_trained_alone(store):
    group = _train(store)
    assert [(d.hook, d.k) for d in group.dictionaries] == [(h, k) for h in HOOKS for k in (4, 8)]
    assert len({d.name for d in group.dictionaries}) == 4 and all(d.status == "complete" for d in group.dictionaries)
    assert all((d.device, d.dtype) == ("cpu", "float32") for d in group.dictionaries)
    alone = _train(store, hook="blocks.1.hook_out", k=8, name="alone").dictionary
    member = next(d for d in group.dictionaries if (d.hook, d.k) == ("blocks.1.hook_out", 8))
    assert member.name != alone.name and member.train_fvu == alone.train_fvu
    grouped_weights = load_dictionary(store.root / member.path).state_dict()
    alone_weights = load_dictionary(store.root / alone.path).state_dict()
    for key, value in alone_weights.items():
        torch.testing.assert_close(grouped_weights[key], value, rtol=0, atol=0)  # bitwise: same batches, same steps


def test_hooks_read_together_get_the_batches_each_gets_alone(store):
    together = ActivationBatches(store, "g", HOOKS, batch_size=100, seed=1).iterate(5)
    alone = ActivationBatches(store, "g", HOOKS[1:], batch_size=100, seed=1).iterate(5)
    for _ in range(30):  # across buffer boundaries
        batch = next(together)
        assert torch.equal(batch[HOOKS[1]], next(alone)[HOOKS[1]])
        assert batch[HOOKS[0]].shape == batch[HOOKS[1]].shape


def test_prefetching_changes_nothing(store):
    ahead = ActivationBatches(store, "g", HOOKS, batch_size=128, seed=2, prefetch=True).iterate(3)
    inline = ActivationBatches(store, "g", HOOKS, batch_size=128, seed=2, prefetch=False).iterate(3)
    for _ in range(40):
        a, b = next(ahead), next(inline)
        assert all(torch.equal(a[h], b[h]) for h in HOOKS)


def test_a_sweep_that_collides_is_refused_before_anything_is_written(store):
    _train(store, k=[4], latents=[64, 96], hook=HOOKS[:1])
    before = store_snapshot(store.root)
    with pytest.raises(DictionaryError, match="exists with different settings.*exists with different settings"):
        _train(store, k=[4], latents=[64, 96], hook=HOOKS[:1], tokens=256 * 30)  # same names, more tokens
    with pytest.raises(DictionaryError, match="several dictionaries the name"):
        _train(store, k=[4, 4], hook=HOOKS[:1])
    assert store_snapshot(store.root) == before
    # From the command line: the sweep options and the refusal's message.
    result = run_cli_in_process(
        "train", "--store", str(store.root), "--hook", HOOKS[0], "--k", "4", "--latents", "64,96", "--tokens", "7680",
        "--batch-size", "256",
    )  # fmt: skip
    assert result.returncode == 2 and "Nothing was trained" in result.stderr, result.stderr
    assert store_snapshot(store.root) == before
