"""TokFSM: the machine, its walks, and a small transformer that learns it (the codebook issue's ground truth)."""

import numpy as np
import pytest

from workbench.codebooks.fsm import BOS, FSMError, TokFSM, next_state_accuracy, tiny_transformer, train_on_fsm

from conftest import deterministic_torch


def test_walks_follow_the_machine_and_label_every_token_with_its_state():
    fsm = TokFSM.random(n_states=20, n_transitions=3, seed=4)
    assert np.allclose(fsm.transitions.sum(1), 1) and ((fsm.transitions > 0).sum(1) == 3).all()
    tokens, states = fsm.sample(16, 10, seed=1)
    assert tokens.shape == states.shape == (16, 21) and (tokens[:, 0] == BOS).all() and (states[:, 0] == -1).all()
    for row in range(16):
        walk = states[row, 1::2].tolist()
        assert all(fsm.transitions[a, b] > 0 for a, b in zip(walk, walk[1:]))
        assert tokens[row, 1:].tolist() == [d for s in walk for d in fsm.encode(s)]
        assert states[row, 1:].tolist() == [s for s in walk for _ in range(2)]


def test_a_small_transformer_learns_the_transitions(fsm_with_codebooks):
    # The fixture's model, measured after its training and before any codebook touched it (one training run
    # serves both this test and the codebook tests).
    learned = fsm_with_codebooks[3]
    losses = learned["losses"]
    assert np.mean(losses[-20:]) < 0.6 * np.mean(losses[:20])
    trained, untrained = learned["trained"], learned["untrained"]
    assert trained > 0.95 and untrained < 0.5, (trained, untrained)


def test_impossible_machines_are_refused():
    with pytest.raises(FSMError, match="2 to 5 outgoing transitions"):
        TokFSM.random(n_states=5, n_transitions=6)


# -- codebooks on the FSM model ----------------------------------------------------------------

SITES = [f"blocks.{layer}.{kind}" for layer in range(2) for kind in ("attn.hook_out", "mlp.hook_out")]


@pytest.fixture(scope="module")
def fsm_with_codebooks():
    """The FSM model with k-means-initialised codebooks at all four sublayer outputs, then fine-tuned; with the
    plain model's training losses and next-state accuracy (and an untrained one's), measured on the way."""
    from workbench.codebooks.attach import CodebookModel
    from workbench.codebooks.finetune import (
        FinetuneSettings,
        codebook_identity,
        finetune,
        mean_lm_loss,
        model_fingerprint,
    )

    with deterministic_torch(seed=0):  # the same losses alone and after any other test module
        fsm = TokFSM.random(seed=0)
        tokens, states = fsm.sample(32, 12, seed=123)
        learned = {"untrained": next_state_accuracy(tiny_transformer(fsm, seed=1), fsm, tokens, states)}
        model = tiny_transformer(fsm)
        learned["losses"] = train_on_fsm(model, fsm, steps=300)
        learned["trained"] = next_state_accuracy(model, fsm, tokens, states)
        coded = CodebookModel(model, SITES, n_codes=64, k=1)
        coded.kmeans_init(fsm.sample(64, 24, seed=5)[0])
        held_out = fsm.sample(64, 24, seed=77)[0]
        losses = {
            "original": mean_lm_loss(coded, held_out, 64, codebooks=False),
            "kmeans": mean_lm_loss(coded, held_out, 64, codebooks=True),
        }
        finetune(
            coded,
            lambda step: fsm.sample(64, 24, seed=10_000 + step)[0],
            150,
            FinetuneSettings(),
            codebook_identity(coded, model_fingerprint(model)),
            progress=False,
        )
        losses["finetuned"] = mean_lm_loss(coded, held_out, 64, codebooks=True)
    print(f"TokFSM LM loss: {losses}")
    return fsm, coded.eval(), losses, learned


def test_finetuning_with_codebooks_recovers_the_lm_loss_and_keeps_the_behaviour(fsm_with_codebooks):
    fsm, coded, losses, _ = fsm_with_codebooks
    # k-means codes alone cost LM loss; fine-tuning wins a good part of it back. The fixture runs deterministically
    # (one thread, deterministic kernels), which measured 71.5% won back (LM loss 0.4718 plain, 0.6261 k-means,
    # 0.5159 fine-tuned), the same alone and after the rest of the suite. Without that, a code choice that flipped
    # early gave anywhere from 31% to 76%. The bar keeps room for another CPU's kernels rounding differently.
    assert losses["kmeans"] > losses["original"]
    recovered = (losses["kmeans"] - losses["finetuned"]) / (losses["kmeans"] - losses["original"])
    assert recovered > 0.5, losses
    tokens, states = fsm.sample(64, 12, seed=999)
    assert next_state_accuracy(coded, fsm, tokens, states) > 0.9


def test_codes_track_the_true_state_well_above_chance(fsm_with_codebooks):
    from workbench.codebooks.fsm_eval import chance_purity, site_purities

    fsm, coded, _, _ = fsm_with_codebooks
    tokens, states = fsm.sample(64, 12, seed=999)
    purities, chance = site_purities(coded, tokens, states), chance_purity(states)
    assert min(purities.values()) > chance and max(purities.values()) > 2 * chance, (purities, chance)


def test_forcing_a_states_codes_moves_predictions_and_generations_toward_its_transitions(fsm_with_codebooks):
    from workbench.codebooks.fsm_eval import intervene, state_codes

    fsm, coded, _, _ = fsm_with_codebooks
    codes = state_codes(coded, fsm, *fsm.sample(128, 12, seed=7))
    tokens, states = fsm.sample(128, 12, seed=8)
    result = intervene(coded, fsm, codes, SITES, tokens, states, position=10)
    assert result.on_target[1] > result.on_target[0] and result.on_current[1] < result.on_current[0], result
    assert result.js_to_target[1] < result.js_to_target[0], result
    assert result.sampled_target[1] > result.sampled_target[0], result


def test_bad_codebook_requests_are_refused(fsm_with_codebooks):
    from workbench.codebooks.attach import CodebookModel
    from workbench.dictionaries.codebook import CodebookError

    fsm, coded, _, _ = fsm_with_codebooks
    with pytest.raises(CodebookError, match="cannot hold a codebook"):
        CodebookModel(coded.hf_model, ["blocks.0.hook_out"], n_codes=8)
    with pytest.raises(Exception, match="out of range"):
        CodebookModel(coded.hf_model, ["blocks.5.mlp.hook_out"], n_codes=8)
    with pytest.raises(CodebookError, match="codebook size"):
        CodebookModel(coded.hf_model, ["blocks.0.mlp.hook_out"], n_codes=8, k=9)
    with pytest.raises(CodebookError, match="codes 0 to 63"):
        with coded.forcing(SITES[0], 64, slice(0, 1)):
            pass
    with pytest.raises(CodebookError, match="No codebook at"):
        with coded.forcing("blocks.0.attn.hook_z", 1, slice(0, 1)):
            pass
