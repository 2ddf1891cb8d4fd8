"""Both backends give the same activations at every hook kind, and those activations are the right ones."""

import pytest
import torch

from workbench.hooks import HOOK_KINDS, parse_hooks
from workbench.models import load_hf_model, make_backend, resolve_model_dir
from workbench.models.families import decoder_layers

ALL_KINDS_BOTH_LAYERS = [f"blocks.{layer}.{kind}" for layer in range(2) for kind in HOOK_KINDS]


def _backend(name, model_dir):
    hf_model, tokenizer = load_hf_model(model_dir)  # each backend gets its own copy of the weights
    return make_backend(name, hf_model, tokenizer)


def _input_ids(vocab: int, batch=3, seq=24):
    generator = torch.Generator().manual_seed(1)
    return torch.randint(0, vocab, (batch, seq), generator=generator)


def _assert_close(a, b, rtol):
    scale = b.abs().max().item()
    assert (a - b).abs().max().item() <= rtol * max(scale, 1e-6), (
        f"max diff {(a - b).abs().max().item()} vs scale {scale}"
    )


def test_backends_agree_at_every_hook_kind(tiny_dir):
    ids = _input_ids(1000)
    hooks = parse_hooks(ALL_KINDS_BOTH_LAYERS, 2)
    lens = _backend("transformerlens", tiny_dir).capture(ids, hooks)
    sight = _backend("nnsight", tiny_dir).capture(ids, hooks)
    assert set(lens) == set(sight) == set(hooks)
    for hook in hooks:
        assert lens[hook].shape == (3, 24, 64)
        assert torch.allclose(lens[hook], sight[hook], atol=1e-4, rtol=0), hook


@pytest.mark.parametrize("backend", ["transformerlens", "nnsight"])
def test_activations_match_the_model_computation(tiny_dir, backend):
    """Independent check against plain HF: residuals match output_hidden_states, and the block's maths holds."""
    ids = _input_ids(1000)
    acts = _backend(backend, tiny_dir).capture(ids, parse_hooks(ALL_KINDS_BOTH_LAYERS, 2))
    by_name = {h.name: a for h, a in acts.items()}
    hf_model, _ = load_hf_model(tiny_dir)
    with torch.no_grad():
        hidden = hf_model(ids, output_hidden_states=True).hidden_states
    for layer in range(2):
        block = decoder_layers(hf_model)[layer]
        resid_pre = by_name[f"blocks.{layer}.hook_in"]
        attn_out = by_name[f"blocks.{layer}.attn.hook_out"]
        mlp_out = by_name[f"blocks.{layer}.mlp.hook_out"]
        _assert_close(resid_pre, hidden[layer], 1e-5)
        with torch.no_grad():
            expected_mlp_in = block.post_attention_layernorm(resid_pre + attn_out)
            expected_mlp_out = block.mlp(expected_mlp_in)
        _assert_close(by_name[f"blocks.{layer}.mlp.hook_in"], expected_mlp_in, 1e-5)
        _assert_close(mlp_out, expected_mlp_out, 1e-5)
        _assert_close(by_name[f"blocks.{layer}.hook_out"], resid_pre + attn_out + mlp_out, 1e-5)
        with torch.no_grad():  # the per-head outputs are what the output projection reads
            _assert_close(block.self_attn.o_proj(by_name[f"blocks.{layer}.attn.hook_z"]), attn_out, 1e-5)
    _assert_close(by_name["blocks.0.hook_out"], hidden[1], 1e-5)


@pytest.mark.parametrize("backend", ["transformerlens", "nnsight"])
def test_forward_pass_stops_after_the_deepest_hook(tiny_dir, backend):
    hf_model, tokenizer = load_hf_model(tiny_dir)
    wrapped = make_backend(backend, hf_model, tokenizer)
    calls = {"layer1": 0, "lm_head": 0}
    # Pre-hooks count entries into a module, however the backend wraps it.
    decoder_layers(hf_model)[1].register_forward_pre_hook(lambda *a: calls.__setitem__("layer1", calls["layer1"] + 1))
    hf_model.lm_head.register_forward_pre_hook(lambda *a: calls.__setitem__("lm_head", calls["lm_head"] + 1))
    acts = wrapped.capture(_input_ids(1000), parse_hooks("blocks.0.hook_out,blocks.0.hook_in", 2))
    assert len(acts) == 2
    assert calls == {"layer1": 0, "lm_head": 0}
    wrapped.capture(_input_ids(1000), parse_hooks("blocks.1.hook_out", 2))
    assert calls["layer1"] == 1 and calls["lm_head"] == 0


@pytest.mark.slow
def test_backends_agree_on_smollm2(models_dir):
    model_dir = resolve_model_dir("smollm2-135m", models_dir)
    ids = _input_ids(49152, batch=2, seq=32)
    names = [f"blocks.{layer}.{kind}" for layer in (0, 6, 29) for kind in HOOK_KINDS]
    hooks = parse_hooks(names, 30)
    lens = _backend("transformerlens", model_dir).capture(ids, hooks)
    sight = _backend("nnsight", model_dir).capture(ids, hooks)
    for hook in hooks:
        # Residual norms reach ~1e3 in this model, so compare relative to the tensor's scale.
        _assert_close(lens[hook], sight[hook], 1e-4)


@pytest.mark.slow
def test_smollm2_predicts_ioi_answer(models_dir):
    """The dequantized model is the real pretrained one: it completes the IOI prompt with the indirect object."""
    hf_model, tokenizer = load_hf_model(resolve_model_dir("smollm2-135m", models_dir))
    ids = tokenizer("When Mary and John went to the store, John gave a drink to", return_tensors="pt").input_ids
    with torch.no_grad():
        next_token = hf_model(ids).logits[0, -1].argmax().item()
    assert tokenizer.decode([next_token]) == " Mary"
