"""Depth-usage probes on the tiny model, against direct computations and planted ground truth."""

import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from workbench.corpus import tokenize_corpus
from workbench.errors import ProbeError
from workbench.models import load_hf_model
from workbench.models.families import decoder_layers
from workbench.probes.depth import DepthProbeConfig, run_depth_probes
from workbench.probes.linear_maps import LinearMapsConfig, align_tokens, layer_map_errors, run_linear_maps, token_keys
from workbench.probes.logit_lens import final_norm_and_unembed
from workbench.probes.results import depth_score
from workbench.store import Store

from conftest import run_cli, run_cli_in_process, store_snapshot

TOKENS, CONTEXT = 1024, 64


def _probe(store_dir, **overrides):
    settings = dict(
        model="tiny",
        store=str(store_dir),
        tokens=TOKENS,
        context_len=CONTEXT,
        batch_size=8,
        lens_tokens=TOKENS,
        skip_tokens=512,
        name="p",
    )
    settings.update(overrides)
    run_depth_probes(DepthProbeConfig(**settings), progress=False)
    return Store.open_existing(store_dir)


def _rows(store, sql):
    with store.reader() as con:
        return con.execute(sql).fetchall()


def _direct_sublayer_measures(model_dir):
    """The same quantities from plain HF forward hooks on the attention and MLP modules."""
    hf_model, tokenizer = load_hf_model(model_dir)
    ids = torch.from_numpy(tokenize_corpus("default", tokenizer, TOKENS, CONTEXT).contexts()).long()
    seen = {}
    for layer, block in enumerate(decoder_layers(hf_model)):
        block.register_forward_pre_hook(
            lambda m, args, kwargs, l=layer: seen.__setitem__((l, "h"), (args[0] if args else kwargs["hidden_states"])),
            with_kwargs=True,
        )
        block.self_attn.register_forward_hook(lambda m, i, o, l=layer: seen.__setitem__((l, "a"), o[0]))
        block.mlp.register_forward_hook(lambda m, i, o, l=layer: seen.__setitem__((l, "m"), o))
        block.register_forward_hook(
            lambda m, i, o, l=layer: seen.__setitem__((l, "out"), o[0] if isinstance(o, tuple) else o)
        )
    per_token = {}
    with torch.no_grad():
        for start in range(0, len(ids), 8):
            hf_model(ids[start : start + 8])
            for layer in range(2):
                h, a, m, out = (seen[layer, k][:, 1:].double() for k in ("h", "a", "m", "out"))
                values = {
                    "attn_norm_ratio": a.norm(dim=-1) / h.norm(dim=-1),
                    "mlp_norm_ratio": m.norm(dim=-1) / (h + a).norm(dim=-1),
                    "layer_norm_ratio": (a + m).norm(dim=-1) / h.norm(dim=-1),
                    "cos_attn_resid": torch.nn.functional.cosine_similarity(a, h, dim=-1),
                    "cos_next_resid": torch.nn.functional.cosine_similarity(out, h, dim=-1),
                }
                for metric, v in values.items():
                    per_token.setdefault((layer, metric), []).append(v.reshape(-1))
    return {key: torch.cat(v) for key, v in per_token.items()}


def test_sublayer_ratios_agree_with_a_direct_computation(store_dir, tiny_dir):
    store = _probe(store_dir)
    stored = {
        (l, m): (mean, mx, n)
        for l, m, mean, mx, n in _rows(
            store, "SELECT layer, metric, mean, max, n_tokens FROM probe_sublayer WHERE probe_run = 'p'"
        )
    }
    direct = _direct_sublayer_measures(tiny_dir)
    assert len(stored) == 2 * 7
    for key, values in direct.items():
        mean, mx, n = stored[key]
        assert n == values.numel() == (TOKENS // CONTEXT) * (CONTEXT - 1)
        assert mean == pytest.approx(values.mean().item(), rel=1e-4), key
        assert mx == pytest.approx(values.max().item(), rel=1e-4), key


def test_logit_lens_at_the_last_layer_is_the_model_output(store_dir):
    store = _probe(store_dir)
    rows = _rows(store, "SELECT layer, kl_mean, kl_max, top5_overlap_mean FROM probe_logit_lens ORDER BY layer")
    last = rows[-1]
    assert last[0] == 1 and last[2] < 1e-5 and last[3] == pytest.approx(1.0)
    assert rows[0][1] > 1e-4  # the first layer's lens is not the output: the probe can tell them apart


@pytest.fixture
def tiny_with_dead_layer0(tmp_path, tiny_dir):
    """The tiny model with block 0's attention and MLP output weights zeroed: block 0 does nothing."""
    folder = tmp_path / "tiny-dead0"
    shutil.copytree(tiny_dir, folder)
    weights = load_file(folder / "model.safetensors")
    for key in ("model.layers.0.self_attn.o_proj.weight", "model.layers.0.mlp.down_proj.weight"):
        weights[key] = torch.zeros_like(weights[key])
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


def test_skipping_a_layer_with_zeroed_weights_has_zero_effect(store_dir, tiny_with_dead_layer0):
    store = _probe(store_dir, model=str(tiny_with_dead_layer0))
    layers = dict(_rows(store, "SELECT skipped_layer, rel_change_max FROM probe_skip_layers"))
    outputs = {
        s: (kl, kl_skipped)
        for s, kl, kl_skipped in _rows(store, "SELECT skipped_layer, kl_max, skipped_kl_max FROM probe_skip_output")
    }
    assert layers[0] == 0.0 and outputs[0] == (0.0, 0.0)
    assert outputs[1][1] > 1e-4  # skipping the live layer does change the output at the skipped positions


def test_skipping_a_live_layer_changes_later_updates(store_dir):
    store = _probe(store_dir)
    ((mean, mx, n),) = _rows(
        store,
        "SELECT rel_change_mean, rel_change_max, n_tokens FROM probe_skip_layers "
        "WHERE skipped_layer = 0 AND affected_layer = 1",
    )
    assert 0 < mean <= mx and n == 8 * (CONTEXT - CONTEXT // 2)
    scores = dict(_rows(store, "SELECT measure, relative_depth_score FROM probe_depth_scores"))
    assert 0.0 <= scores["skipped_positions_kl"] <= 1.0


def test_both_backends_give_the_same_probe_results(store_dir):
    store = _probe(store_dir, backend="transformerlens", name="lens")
    _probe(store_dir, backend="nnsight", name="sight")
    for table, value in [
        ("probe_sublayer", "mean"),
        ("probe_logit_lens", "kl_mean"),
        ("probe_skip_output", "skipped_kl_mean"),
    ]:
        a = [r[0] for r in _rows(store, f"SELECT {value} FROM {table} WHERE probe_run = 'lens' ORDER BY ALL")]
        b = [r[0] for r in _rows(store, f"SELECT {value} FROM {table} WHERE probe_run = 'sight' ORDER BY ALL")]
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)


def test_linear_map_fit_recovers_a_planted_relation():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(4000, 24, generator=generator)
    weight, bias = torch.randn(24, 16, generator=generator), torch.randn(16, generator=generator)
    planted = x @ weight + bias
    unrelated = torch.randn(4000, 16, generator=generator)
    errors = layer_map_errors([x], [planted, unrelated])
    assert errors[0, 0] < 1e-3
    assert errors[0, 1] > 0.9


def test_token_alignment_uses_shared_text_positions():
    # A tokenizes "ab cd" as [BOS] "ab" " cd"; B as [BOS] "a" "b" " c" "d": shared ends are 2 and 5.
    keys_a = token_keys(np.array([-1, 0, 0]), np.array([0, 2, 5]))
    keys_b = token_keys(np.array([-1, 0, 0, 0, 0]), np.array([0, 1, 2, 4, 5]))
    rows_a, rows_b = align_tokens(keys_a, keys_b)
    assert rows_a.tolist() == [1, 2] and rows_b.tolist() == [2, 4]


def test_linear_maps_between_models_are_stored(store_dir):
    run_linear_maps(LinearMapsConfig(source="tiny", target="tiny", store=str(store_dir), tokens=1024, name="m"))
    with Store.open_existing(store_dir).reader() as con:
        grid = con.execute(
            "SELECT source_layer, target_layer, rel_error, source_rel_depth FROM probe_linear_maps ORDER BY ALL"
        ).fetchall()
    assert [(r[0], r[1]) for r in grid] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    errors = {(r[0], r[1]): r[2] for r in grid}
    assert errors[0, 0] < 0.02 and errors[1, 1] < 0.02 and errors[0, 1] > 5 * errors[0, 0]
    assert grid[0][3] == 0.5
    info = run_cli("store", "info", str(store_dir))
    assert info.returncode == 0 and "Probe runs" in info.stdout and "linear_maps" in info.stdout


def test_bad_probe_input_is_reported_and_changes_nothing(store_dir):
    _probe(store_dir)
    before = store_snapshot(store_dir)
    with pytest.raises(ProbeError, match="Layer index out of range: \\[2\\]"):
        _probe(store_dir, skip_layers=[0, 2])
    with pytest.raises(ProbeError, match="split-position"):
        _probe(store_dir, split_position=CONTEXT)
    with pytest.raises(ProbeError, match="Too few aligned tokens.*Raise --tokens"):
        run_linear_maps(LinearMapsConfig(source="tiny", target="tiny", store=str(store_dir), tokens=64))
    assert store_snapshot(store_dir) == before
    with pytest.raises(ProbeError, match="final norm.*--lens-tokens 0"):
        final_norm_and_unembed(torch.nn.Linear(2, 2))
    cli = run_cli_in_process("probe", "depth", "--model", "tiny", "--store", str(store_dir), "--skip-layers", "9")
    assert cli.returncode == 2 and "Layer index out of range" in cli.stderr


def test_depth_score_is_the_effect_weighted_mean_layer():
    assert depth_score({0: 1.0, 1: 1.0, 2: 2.0}) == pytest.approx(1.25)
    assert depth_score({0: 0.0, 3: 5.0}) == 3.0


@pytest.mark.slow
def test_depth_probes_on_smollm2(store_dir, models_dir):
    from workbench.models import resolve_model_dir

    resolve_model_dir("smollm2-135m", models_dir)
    store = _probe(
        store_dir,
        model="smollm2-135m",
        tokens=1024,
        context_len=128,
        lens_tokens=1024,
        skip_tokens=1024,
        skip_layers=[0, 14, 29],
    )
    lens = dict(_rows(store, "SELECT layer, kl_mean FROM probe_logit_lens"))
    assert len(lens) == 30 and lens[29] < 1e-4
    assert min(lens[0], lens[20]) > lens[27] > lens[29]  # the lens converges on the output in the last layers
    ratios = [r[0] for r in _rows(store, "SELECT mean FROM probe_sublayer WHERE metric = 'layer_norm_ratio'")]
    assert len(ratios) == 30 and all(0 < r < 100 for r in ratios)
    outputs = {
        s: (kl, kls)
        for s, kl, kls in _rows(store, "SELECT skipped_layer, kl_mean, skipped_kl_mean FROM probe_skip_output")
    }
    assert outputs[29][0] == 0.0 and outputs[29][1] > 0  # the last layer only affects its own positions
    assert outputs[0][0] > 0 and outputs[14][0] > 0
