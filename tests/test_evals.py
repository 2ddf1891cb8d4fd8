"""Evaluations beyond the core metrics: steering and ablation, absorption, sparse probing, autointerp, seed bands,
the scores table and the Neuronpedia export. Real stores, real forward passes of the tiny model."""

from __future__ import annotations

import pytest
import torch

from workbench.errors import DictionaryError
from workbench.evals.common import LoadedDictionary
from workbench.evals.steering import AblateConfig, SteerConfig, generate, run_ablate, run_steer, steering
from workbench.features import DictionaryView, Unembedding
from workbench.store import Store


@pytest.fixture(scope="module")
def loaded_d(app_store):
    return LoadedDictionary.load(Store.open_existing(app_store), "d", device="cpu")


def _logits(loaded, ids):
    with torch.no_grad():
        return loaded.hf_model(ids).logits


@pytest.mark.parametrize("name", ["d", "tc1"])
def test_unsteered_output_is_unchanged_with_the_error_term_kept(app_store, name):
    loaded = LoadedDictionary.load(Store.open_existing(app_store), name, device="cpu")
    ids = loaded.prompt_ids("The cat sat on the mat and then it ran to the door.")
    clean = _logits(loaded, ids)
    with steering(loaded.hf_model, loaded.record, loaded.sae, 3, 0.0, "add"):
        added = _logits(loaded, ids)
    # Clamping a feature to the value it already has rebuilds x as decode(f) + (x - decode(f)).
    features = _feature_values(loaded, ids)
    silent = int((features[1:] == 0).all(0).nonzero()[0])
    with steering(loaded.hf_model, loaded.record, loaded.sae, silent, 0.0, "clamp"):
        clamped = _logits(loaded, ids)
    assert (added - clean).abs().max().item() == 0.0
    assert (clamped - clean).abs().max().item() < 1e-5
    with steering(loaded.hf_model, loaded.record, loaded.sae, silent, 5.0, "clamp"):
        moved = _logits(loaded, ids)
    assert (moved - clean).abs().max().item() > 1e-2  # the hook is live: a clamp that changes f changes the output
    assert torch.equal(moved[:, 0], clean[:, 0])  # BOS is never steered


def _feature_values(loaded, ids):
    point = loaded.point
    return loaded.encode(loaded.backend.capture(ids, [point])[point][0])


def test_steering_a_planted_feature_moves_the_output_as_predicted(app_store, loaded_d):
    """Feature 0's decoder row is planted on the direction that most raises one token's logit through the final norm
    and unembedding; steered hard at the last layer, the model must predict that token everywhere, and the token's
    logit must rise with the strength."""
    store = Store.open_existing(app_store)
    unembed = Unembedding.from_model(loaded_d.hf_model, loaded_d.tokenizer)
    target = 1234
    direction = unembed.weight[target] / unembed.weight[target].norm()
    original = loaded_d.sae.W_dec.data[0].clone()
    loaded_d.sae.W_dec.data[0] = direction
    try:
        view = DictionaryView(store, loaded_d.record)
        view.model = loaded_d.sae
        predicted = view.logit_effects(unembed, 0, n=1)[0][0][0]
        ids = loaded_d.prompt_ids("Once upon a time there was a small village by the sea.")
        rises = []
        for strength in (0.0, 5.0, 20.0, 80.0):
            with steering(loaded_d.hf_model, loaded_d.record, loaded_d.sae, 0, strength):
                rises.append(_logits(loaded_d, ids)[0, 1:, target].mean().item())
        assert rises == sorted(rises) and rises[-1] > rises[0] + 1.0
        with steering(loaded_d.hf_model, loaded_d.record, loaded_d.sae, 0, 1e4):
            text = generate(loaded_d, ids, max_new_tokens=6, temperature=0.0, seed=0)
    finally:
        loaded_d.sae.W_dec.data[0] = original
    assert predicted == loaded_d.tokenizer.decode([target]) or text == predicted * 6
    assert text == predicted * 6


def test_steer_command_changes_the_continuation_and_refuses_bad_features(app_store):
    result = run_steer(
        SteerConfig(store=str(app_store), dictionary="d", feature=5, prompt="The", strength=200.0, device="cpu")
    )
    unsteered = run_steer(
        SteerConfig(store=str(app_store), dictionary="d", feature=5, prompt="The", strength=0.0, device="cpu")
    )
    assert result.baseline == unsteered.steered == unsteered.baseline
    assert result.steered != result.baseline
    with pytest.raises(DictionaryError, match="out of range: 'd' has features 0 to 127"):
        run_steer(SteerConfig(store=str(app_store), dictionary="d", feature=128, device="cpu"))


def test_ablating_a_feature_changes_the_loss_only_where_it_fires(app_store):
    busiest = _busiest_feature(app_store)
    result = run_ablate(AblateConfig(store=str(app_store), dictionary="d", feature=busiest, tokens=1024, device="cpu"))
    assert result.n_active > 0 and result.delta_ce_where_active is not None
    # Zeroing a feature only changes positions from its first firing on; where it fires, the change is largest.
    assert abs(result.delta_ce_where_active) > abs(result.delta_ce) > 0


def _busiest_feature(app_store) -> int:
    from workbench.store.sql import run_query

    rows = run_query(
        Store.open_existing(app_store),
        "SELECT feature FROM feature_stats WHERE dictionary = 'd' ORDER BY n_active DESC LIMIT 1",
    )
    return int(rows.table.column(0)[0].as_py())
