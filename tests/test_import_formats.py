"""`workbench import` of other tools' formats and of named sources (SAELens release/id, hf://).

Each format test writes a folder exactly as the peer writes it, from random tensors, imports it into a
store with the tiny model harvested, and checks that our dictionary's encode and reconstruction equal the
format's own definition computed here from the raw arrays (or, for SAELens, SAELens's own SAE). Named
sources run offline: a fake Hugging Face cache for the cached case, HF_HUB_OFFLINE for the failure's advice.
"""

from __future__ import annotations

import copy
import json
import re

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from workbench.dictionaries import load_dictionary
from workbench.errors import DictionaryError
from workbench.import_sae import ImportConfig, run_import

from conftest import run_cli_in_process, store_snapshot

TOLERANCE = 1e-5  # of the compared tensor's largest value (reconstructions reach ~30 here), at least absolute
D = 64  # the tiny model's d_model; its attn.hook_z is 4 heads x 16, also 64 wide
LATENTS = 96
HOOKS = [
    "blocks.0.mlp.hook_in",
    "blocks.0.mlp.hook_out",
    "blocks.1.attn.hook_z",
    "blocks.1.mlp.hook_in",
    "blocks.1.mlp.hook_out",
    "blocks.1.hook_out",
]


@pytest.fixture(scope="module")
def store(tmp_path_factory, models_dir):
    """One store for the module: the tiny model harvested at every hook the imports need. Each test imports
    under its own names, so tests do not see each other's dictionaries."""
    from workbench.harvest import HarvestConfig, run_harvest

    root = tmp_path_factory.mktemp("imports") / "store"
    root.mkdir()
    (root / "models").symlink_to(models_dir, target_is_directory=True)
    run_harvest(HarvestConfig(model="tiny", hooks=HOOKS, store=str(root), tokens=1024, run="h"), progress=False)
    return root


def unchanged(store):
    """What a refused import must leave as it was: the catalog, the shards and the dictionary folders."""
    folders = sorted(p.name for p in (store / "dictionaries").iterdir()) if (store / "dictionaries").exists() else []
    return store_snapshot(store), folders


def imported(store, name):
    return load_dictionary(store / "dictionaries" / name)


def record(store, name):
    from workbench.store import Store, lookups

    return lookups.completed_dictionary(Store.open_existing(store), name)


def inputs(seed=1, n=256, d=D):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed)) * 2


def jumprelu_arrays(d_in=D, d_out=D, seed=0):
    """Gemma Scope-style arrays (W_enc [d_in, d_sae], ...) as float32 numpy, every one non-trivial."""
    rng = np.random.default_rng(seed)
    return {
        "W_enc": (rng.normal(size=(d_in, LATENTS)) * 0.3).astype(np.float32),
        "W_dec": (rng.normal(size=(LATENTS, d_out)) * 0.3).astype(np.float32),
        "b_enc": (rng.normal(size=LATENTS) * 0.1).astype(np.float32),
        "b_dec": (rng.normal(size=d_out) * 0.3).astype(np.float32),
        "threshold": (np.abs(rng.normal(size=LATENTS)) * 0.5).astype(np.float32),
    }


def gemma_scope(arrays, x, skip=None):
    """Gemma Scope's definition (their tutorial's JumpReLUSAE): no b_dec subtracted from the input."""
    t = {k: torch.from_numpy(np.asarray(v)) for k, v in arrays.items()}
    pre = x @ t["W_enc"] + t["b_enc"]
    f = torch.relu(pre) * (pre > t["threshold"])
    out = f @ t["W_dec"] + t["b_dec"]
    return f, out if skip is None else out + x @ torch.from_numpy(np.asarray(skip))


def assert_close(actual, expected):
    """Equal to float32 rounding: within TOLERANCE of the larger of 1 and the expected tensor's largest value."""
    assert actual.shape == expected.shape
    error, scale = float((actual - expected).abs().max()), max(1.0, float(expected.abs().max()))
    assert error <= TOLERANCE * scale, f"largest difference {error:.3g} at scale {scale:.3g}"


def assert_matches(ours, f_expected, out_expected, x):
    with torch.no_grad():
        f = ours.encode(x)
        assert (f != 0).float().sum(-1).mean() > 1  # not a comparison of two zero tensors
        assert_close(f, f_expected)
        assert_close(ours.reconstruct(x), out_expected)


# -- SAELens folders: normalisation folded, per-input normalisation refused, hook_z ------------------------


def their_sae(architecture, **cfg):
    sae_lens = pytest.importorskip("sae_lens", reason="sae-lens is in the saelens extra")
    from sae_lens.saes.sae import get_sae_class

    sae_cls, cfg_cls = get_sae_class(architecture)
    sae = sae_cls(cfg_cls(d_in=D, d_sae=LATENTS, **cfg))
    torch.manual_seed(3)
    with torch.no_grad():
        for tensor in sae.state_dict().values():
            tensor.copy_(torch.randn_like(tensor) * 0.3)
        if hasattr(sae, "threshold"):
            sae.threshold.copy_(torch.rand_like(sae.threshold) * 0.3)
    assert sae_lens is not None
    return sae.eval()


@pytest.mark.parametrize(
    "architecture,cfg", [("jumprelu", {}), ("topk", {"k": 8, "rescale_acts_by_decoder_norm": True})]
)
def test_expected_average_normalisation_is_folded_as_sae_lens_folds_it(store, tmp_path, architecture, cfg):
    scale = 0.37
    theirs = their_sae(
        architecture, normalize_activations="expected_average_only_in", apply_b_dec_to_input=False, **cfg
    )
    theirs.save_model(tmp_path / "sae")
    (tmp_path / "sae" / "activation_scaler.json").write_text(json.dumps({"scaling_factor": scale}))
    result = run_import(
        ImportConfig(
            store=str(store), source=str(tmp_path / "sae"), hook="blocks.1.hook_out", name=f"norm-{architecture}"
        )
    )
    assert result.format == "saelens" and "expected_average_only_in" in json.dumps(result.dictionary.config)
    ours, x = imported(store, f"norm-{architecture}"), inputs()
    folded = copy.deepcopy(theirs)
    folded.fold_activation_norm_scaling_factor(scale)  # what SAELens's from_pretrained and trainer do with it
    with torch.no_grad():
        assert_matches(ours, folded.encode(x), folded(x), x)
        # and SAELens's SAE on the inputs it was trained on (x * scale), its reconstruction scaled back
        assert_close(ours.reconstruct(x), theirs(x * scale) / scale)
        if not cfg.get("rescale_acts_by_decoder_norm"):  # SAELens's fold divides those latents by scale
            assert_close(ours.encode(x), theirs.encode(x * scale))


def test_a_scaling_factor_is_required_or_given_on_the_command_line(store, tmp_path):
    theirs = their_sae("jumprelu", normalize_activations="expected_average_only_in")
    theirs.save_model(tmp_path / "sae")
    before = unchanged(store)
    bad = run_cli_in_process("import", str(tmp_path / "sae"), "--store", str(store), "--hook", "blocks.1.hook_out")
    assert bad.returncode == 2 and "--norm-scaling-factor" in bad.stderr, bad.stderr
    assert unchanged(store) == before
    good = run_cli_in_process(
        "import", str(tmp_path / "sae"), "--store", str(store), "--hook", "blocks.1.hook_out",
        "--norm-scaling-factor", "2.5", "--name", "given-scale",
    )  # fmt: skip
    assert good.returncode == 0, good.stderr
    x = inputs()
    with torch.no_grad():
        assert_matches(imported(store, "given-scale"), theirs.encode(x * 2.5), theirs(x * 2.5) / 2.5, x)


def test_covariance_whitening_is_folded_from_the_files_sae_lens_saves_beside_it(store, tmp_path):
    theirs = their_sae("jumprelu", normalize_activations="covariance_whitening", apply_b_dec_to_input=False)
    theirs.save_model(tmp_path / "sae")
    g = torch.Generator().manual_seed(7)
    mean = torch.randn(D, generator=g)
    matrix = torch.eye(D) + 0.1 * torch.randn(D, D, generator=g)
    inverse = torch.linalg.inv(matrix).contiguous()
    save_file(
        {"mean": mean, "matrix": matrix, "inverse_matrix": inverse},
        tmp_path / "sae" / "activation_whitening.safetensors",
    )
    (tmp_path / "sae" / "activation_scaler.json").write_text(
        json.dumps({"scaling_factor": None, "has_whitening": True})
    )
    run_import(ImportConfig(store=str(store), source=str(tmp_path / "sae"), hook="blocks.1.hook_out", name="whitened"))
    ours, x = imported(store, "whitened"), inputs()
    z = (x - mean) @ matrix  # what SAELens's activation scaler fed it in training
    with torch.no_grad():
        assert_matches(ours, theirs.encode(z), theirs(z) @ inverse + mean, x)


@pytest.mark.parametrize("mode", ["layer_norm", "constant_norm_rescale"])
def test_per_input_normalisation_is_refused_with_the_reason_and_nothing_written(store, tmp_path, mode):
    their_sae("jumprelu", normalize_activations=mode).save_model(tmp_path / "sae")
    before = unchanged(store)
    with pytest.raises(DictionaryError, match=f"{mode}.*depends on each input"):
        run_import(ImportConfig(store=str(store), source=str(tmp_path / "sae"), hook="blocks.1.hook_out"))
    assert unchanged(store) == before


def test_a_hook_z_sae_reads_the_heads_side_by_side_on_attn_hook_z(store, tmp_path):
    pytest.importorskip("sae_lens", reason="sae-lens is in the saelens extra")
    from sae_lens.saes.sae import SAEMetadata

    theirs = their_sae("jumprelu", reshape_activations="hook_z", metadata=SAEMetadata(hook_name="blocks.1.attn.hook_z"))
    theirs.save_model(tmp_path / "z")
    before = unchanged(store)
    with pytest.raises(DictionaryError, match="attn.hook_z"):  # same width as the residual, wrong place
        run_import(ImportConfig(store=str(store), source=str(tmp_path / "z"), hook="blocks.1.hook_out"))
    assert unchanged(store) == before
    result = run_import(ImportConfig(store=str(store), source=str(tmp_path / "z"), name="z"))  # hook from cfg.json
    assert result.dictionary.hook == "blocks.1.attn.hook_z"
    x = inputs()
    heads = x.reshape(-1, 4, 16)  # SAELens's hook_z input: [..., n_heads, d_head], flattened head-major
    with torch.no_grad():
        assert_matches(imported(store, "z"), theirs.encode(heads), theirs(heads).reshape(-1, D), x)


# -- Gemma Scope: params.npz ---------------------------------------------------------------------------


def test_gemma_scope_npz_sae_equals_its_definition(store, tmp_path):
    arrays = jumprelu_arrays()
    (tmp_path / "gs").mkdir()
    np.savez(tmp_path / "gs" / "params.npz", **arrays)
    result = run_import(
        ImportConfig(store=str(store), source=str(tmp_path / "gs"), hook="blocks.1.hook_resid_post", name="gs")
    )
    assert (result.format, result.dictionary.hook, result.dictionary.arch) == (
        "gemmascope",
        "blocks.1.hook_out",
        "jumprelu",
    )
    x = inputs()
    assert_matches(imported(store, "gs"), *gemma_scope(arrays, x), x)


def test_gemma_scope_npz_as_a_transcoder_when_out_is_given(store, tmp_path):
    arrays = jumprelu_arrays(seed=4)
    (tmp_path / "gst").mkdir()
    np.savez(tmp_path / "gst" / "params.npz", **arrays)
    run_import(
        ImportConfig(
            store=str(store),
            source=str(tmp_path / "gst"),
            hook="blocks.1.mlp.hook_in",
            hook_out="blocks.1.mlp.hook_out",
            name="gst",
        )
    )
    x = inputs()
    assert_matches(imported(store, "gst"), *gemma_scope(arrays, x), x)


def without_threshold():
    arrays = jumprelu_arrays()
    del arrays["threshold"]
    return arrays


def with_short_b_dec():
    arrays = jumprelu_arrays()
    arrays["b_dec"] = arrays["b_dec"][:10]
    return arrays


@pytest.mark.parametrize(
    "arrays,message",
    [
        (without_threshold, "missing array.*threshold"),
        (with_short_b_dec, r"inconsistent shapes.*b_dec \(10,\)"),
        (lambda: jumprelu_arrays(d_in=16, d_out=16), "Dimension mismatch.*width is 16"),
    ],
    ids=["missing-threshold", "inconsistent-b_dec", "too-narrow"],
)
def test_a_bad_npz_is_refused_by_name_and_nothing_is_written(store, tmp_path, arrays, message):
    (tmp_path / "bad").mkdir()
    np.savez(tmp_path / "bad" / "params.npz", **arrays())
    before = unchanged(store)
    bad = run_cli_in_process("import", str(tmp_path / "bad"), "--store", str(store), "--hook", "blocks.1.hook_out")
    assert bad.returncode == 2 and re.search(message, bad.stderr, re.S), bad.stderr
    assert unchanged(store) == before


# -- Gemma Scope 2: params.safetensors + config.json ----------------------------------------------------


def gemma_scope_2_folder(folder, arrays, config, skip=None):
    folder.mkdir(parents=True)
    tensors = {("w_" + k[2:] if k.startswith("W_") else k): torch.from_numpy(v) for k, v in arrays.items()}
    if skip is not None:
        tensors["affine_skip_connection"] = torch.from_numpy(skip)
    save_file(tensors, folder / "params.safetensors")
    (folder / "config.json").write_text(
        json.dumps({"architecture": "jump_relu", "model_name": "google/gemma-3-270m", **config})
    )


def test_gemma_scope_2_sae_takes_its_hook_from_config_json(store, tmp_path):
    arrays = jumprelu_arrays(seed=5)
    gemma_scope_2_folder(
        tmp_path / "resid_post" / "layer_1_width_16k_l0_small", arrays, {"hf_hook_point_in": "model.layers.1.output"}
    )
    result = run_import(
        ImportConfig(store=str(store), source=str(tmp_path / "resid_post" / "layer_1_width_16k_l0_small"), name="gs2")
    )
    assert (result.format, result.dictionary.hook, result.dictionary.hook_out) == (
        "gemmascope2",
        "blocks.1.hook_out",
        None,
    )
    x = inputs()
    assert_matches(imported(store, "gs2"), *gemma_scope(arrays, x), x)


def test_gemma_scope_2_affine_transcoder(store, tmp_path):
    arrays = jumprelu_arrays(seed=6)
    skip = (np.random.default_rng(9).normal(size=(D, D)) * 0.1).astype(np.float32)  # stored [d_in, d_out]
    points = {
        "hf_hook_point_in": "model.layers.0.pre_feedforward_layernorm.output",
        "hf_hook_point_out": "model.layers.0.post_feedforward_layernorm.output",
        "affine_connection": True,
    }
    gemma_scope_2_folder(tmp_path / "tc", arrays, points, skip=skip)
    result = run_import(ImportConfig(store=str(store), source=str(tmp_path / "tc"), name="gs2-tc"))
    assert (result.dictionary.hook, result.dictionary.hook_out) == ("blocks.0.mlp.hook_in", "blocks.0.mlp.hook_out")
    x = inputs()
    assert_matches(imported(store, "gs2-tc"), *gemma_scope(arrays, x, skip=skip), x)


# -- circuit-tracer transcoder sets ---------------------------------------------------------------------


def circuit_tracer_layer(seed, *, threshold=True, skip=False, old_layout=False):
    """A SingleLayerTranscoder's tensors as circuit-tracer saves them: W_enc [d_transcoder, d_model]."""
    g = torch.Generator().manual_seed(seed)
    tensors = {
        "W_enc": torch.randn(LATENTS, D, generator=g) * 0.3,
        "W_dec": torch.randn(LATENTS, D, generator=g) * 0.3,
        "b_enc": torch.randn(LATENTS, generator=g) * 0.1,
        "b_dec": torch.randn(D, generator=g) * 0.3,
    }
    if threshold:
        tensors["activation_function.threshold"] = torch.rand(LATENTS, generator=g) * 0.5
    if skip:
        tensors["W_skip"] = torch.randn(D, D, generator=g) * 0.1  # [d_out, d_in], applied as x @ W_skip.T
    saved = dict(tensors)
    if old_layout:
        saved["W_dec"] = tensors["W_dec"].T.contiguous()  # circuit-tracer before lazy loading
    return tensors, saved


def circuit_tracer(tensors, x):
    """circuit-tracer's SingleLayerTranscoder: F.linear encoder, JumpReLU pre * (pre > t) or ReLU, skip x @ W_skip.T."""
    pre = torch.nn.functional.linear(x, tensors["W_enc"], tensors["b_enc"])
    threshold = tensors.get("activation_function.threshold")
    f = torch.relu(pre) if threshold is None else pre * (pre > threshold)
    out = f @ tensors["W_dec"] + tensors["b_dec"]
    return f, out + x @ tensors["W_skip"].T if "W_skip" in tensors else out


def test_a_circuit_tracer_set_registers_one_transcoder_per_layer(store, tmp_path):
    import yaml

    folder = tmp_path / "set"
    folder.mkdir()
    layers = [circuit_tracer_layer(10, skip=True), circuit_tracer_layer(11, threshold=False)]
    for i, (_, saved) in enumerate(layers):
        save_file(saved, folder / f"layer_{i}.safetensors")
    config = {
        "model_name": "tiny",
        "model_kind": "transcoder_set",
        "feature_input_hook": "mlp.hook_in",
        "feature_output_hook": "mlp.hook_out",
        "transcoders": [f"hf://someone/tiny-transcoders/layer_{i}.safetensors" for i in range(2)],
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    good = run_cli_in_process("import", str(folder), "--store", str(store), "--name", "ct")
    assert good.returncode == 0 and "2 transcoders" in good.stdout, good.stderr
    x = inputs()
    for layer, (tensors, _) in enumerate(layers):
        rec = record(store, f"ct-L{layer}")
        assert (rec.hook, rec.hook_out, rec.arch) == (
            f"blocks.{layer}.mlp.hook_in",
            f"blocks.{layer}.mlp.hook_out",
            "jumprelu",
        )
        assert rec.config["format"] == "circuit-tracer" and rec.config["layer"] == layer
        assert_matches(imported(store, f"ct-L{layer}"), *circuit_tracer(tensors, x), x)


def test_an_old_style_circuit_tracer_set_with_chosen_layers(store, tmp_path):
    import yaml

    folder = tmp_path / "old"
    folder.mkdir()
    tensors, saved = circuit_tracer_layer(12, old_layout=True)
    save_file(saved, folder / "one.safetensors")
    save_file(circuit_tracer_layer(13)[1], folder / "zero.safetensors")
    config = {  # circuit-tracer's first config style: entries with layer and filepath
        "model_name": "tiny",
        "feature_input_hook": "ln2.hook_normalized",
        "feature_output_hook": "hook_mlp_out",
        "transcoders": [
            {"id": "a", "layer": 0, "filepath": "zero.safetensors"},
            {"id": "b", "layer": 1, "filepath": "one.safetensors"},
        ],
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    result = run_import(ImportConfig(store=str(store), source=str(folder), layers=[1], name="old"))
    assert [d.name for d in result.dictionaries] == ["old-L1"]
    assert (result.dictionary.hook, result.dictionary.hook_out) == ("blocks.1.mlp.hook_in", "blocks.1.mlp.hook_out")
    x = inputs()
    assert_matches(imported(store, "old-L1"), *circuit_tracer(tensors, x), x)


# -- named sources -------------------------------------------------------------------------------------


def test_release_and_id_resolve_offline_to_repo_and_path():
    pytest.importorskip("sae_lens", reason="the release directory comes with sae-lens")
    from workbench.pretrained import resolve

    named = resolve("gemma-scope-2-270m-pt-res/layer_12_width_16k_l0_medium")
    assert (named.repo_id, named.path, named.converter) == (
        "google/gemma-scope-2-270m-pt",
        "resid_post/layer_12_width_16k_l0_medium",
        "gemma_3",
    )
    named = resolve("gemma-scope-2b-pt-transcoders/layer_0/width_16k/average_l0_76")  # an id containing '/'
    assert (named.repo_id, named.path) == ("google/gemma-scope-2b-pt-transcoders", "layer_0/width_16k/average_l0_76")
    assert resolve("gemma-2b-res-jb/blocks.12.hook_resid_post").norm_scaling_factor == pytest.approx(
        0.21381938399317255
    )
    hf = resolve("hf://google/gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71?revision=abc")
    assert (hf.repo_id, hf.path, hf.revision) == (
        "google/gemma-scope-2b-pt-res",
        "layer_20/width_16k/average_l0_71",
        "abc",
    )
    with pytest.raises(DictionaryError, match="gemma-scope-2-270m-pt-res"):  # a close release name is suggested
        resolve("gemma-scope-2-270m-pt-rez/layer_12_width_16k_l0_medium")
    with pytest.raises(DictionaryError, match="layer_12_width_16k_l0_medium"):  # and close ids
        resolve("gemma-scope-2-270m-pt-res/layer_12_width_16k_l0_medum")


@pytest.fixture
def offline_hub(monkeypatch, tmp_path):
    """No network for huggingface_hub, and an empty cache of our own."""
    import huggingface_hub.constants as hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    return tmp_path / "hf-cache"


@pytest.mark.parametrize(
    "source,repo,path",
    [
        (
            "gemma-scope-2-270m-pt-res/layer_12_width_16k_l0_medium",
            "google/gemma-scope-2-270m-pt",
            "resid_post/layer_12_width_16k_l0_medium",
        ),
        (
            "hf://google/gemma-scope-2b-pt-res/layer_1/width_16k/average_l0_71",
            "google/gemma-scope-2b-pt-res",
            "layer_1/width_16k/average_l0_71",
        ),
    ],
    ids=["release", "hf"],
)
def test_offline_the_error_says_how_to_fetch_the_files_and_nothing_is_written(store, offline_hub, source, repo, path):
    if not source.startswith("hf://"):
        pytest.importorskip("sae_lens", reason="the release directory comes with sae-lens")
    before = unchanged(store)
    bad = run_cli_in_process("import", source, "--store", str(store))
    assert bad.returncode == 2, bad.stderr
    assert f"huggingface-cli download {repo} --include '{path}/*' --local-dir DIR" in bad.stderr, bad.stderr
    assert f"workbench import DIR/{path} --store {store}" in bad.stderr
    assert unchanged(store) == before


def fake_cache(cache, repo_id, files):
    """A Hugging Face cache holding `files` ({path in repo: writer(Path)}) at a snapshot of `repo_id`'s main."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    for path, write in files.items():
        target = repo / "snapshots" / commit / path
        target.parent.mkdir(parents=True, exist_ok=True)
        write(target)


def test_a_cached_release_imports_offline_with_its_hooks_from_the_directory(store, offline_hub):
    pytest.importorskip("sae_lens", reason="the release directory comes with sae-lens")
    arrays = jumprelu_arrays(seed=8)
    # SAELens names google/gemma-scope-2b-pt-transcoders' layer 0 (a transcoder; the id contains '/'); the
    # cached files are tiny stand-ins for it, so the hooks (from the repo and path) fit the tiny model.
    path = "layer_0/width_16k/average_l0_76"
    fake_cache(
        offline_hub, "google/gemma-scope-2b-pt-transcoders", {f"{path}/params.npz": lambda p: np.savez(p, **arrays)}
    )
    result = run_import(ImportConfig(store=str(store), source=f"gemma-scope-2b-pt-transcoders/{path}", name="cached"))
    rec = result.dictionary
    assert (rec.hook, rec.hook_out, result.format) == ("blocks.0.mlp.hook_in", "blocks.0.mlp.hook_out", "gemmascope")
    assert rec.config["repo_id"] == "google/gemma-scope-2b-pt-transcoders" and rec.config["path"] == path
    x = inputs()
    assert_matches(imported(store, "cached"), *gemma_scope(arrays, x), x)  # a transcoder: the input as it is


def test_a_cached_release_folds_the_directorys_norm_scaling_factor(store, offline_hub):
    pytest.importorskip("sae_lens", reason="the release directory comes with sae-lens")
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory
    from sae_lens.saes.sae import SAEMetadata

    entry = get_pretrained_saes_directory()["gemma-2b-res-jb"]
    scale = entry.norm_scaling_factor["blocks.12.hook_resid_post"]
    theirs = their_sae(
        "standard",
        normalize_activations="expected_average_only_in",
        metadata=SAEMetadata(hook_name="blocks.1.hook_resid_post"),
    )
    fake_cache(offline_hub, entry.repo_id, {entry.saes_map["blocks.12.hook_resid_post"]: theirs.save_model})
    result = run_import(ImportConfig(store=str(store), source="gemma-2b-res-jb/blocks.12.hook_resid_post", name="nsf"))
    assert result.dictionary.hook == "blocks.1.hook_out"  # from cfg.json's metadata
    x = inputs()
    with torch.no_grad():
        assert_matches(imported(store, "nsf"), theirs.encode(x * scale), theirs(x * scale) / scale, x)


def test_a_cached_hf_transcoder_set_imports_the_chosen_layers(store, offline_hub):
    import yaml

    layers = [circuit_tracer_layer(20), circuit_tracer_layer(21, skip=True)]
    config = {
        "model_kind": "transcoder_set",
        "feature_input_hook": "mlp.hook_in",
        "feature_output_hook": "mlp.hook_out",
    }
    files = {"config.yaml": lambda p: p.write_text(yaml.safe_dump(config))}  # no list: the layer_*.safetensors
    for i, (_, saved) in enumerate(layers):
        files[f"layer_{i}.safetensors"] = lambda p, saved=saved: save_file(saved, p)
    fake_cache(offline_hub, "someone/tiny-transcoders", files)
    result = run_import(ImportConfig(store=str(store), source="hf://someone/tiny-transcoders", layers=[1]))
    assert [d.name for d in result.dictionaries] == ["imported-tiny-transcoders-L1"]
    assert result.dictionary.config["imported_from"] == "hf://someone/tiny-transcoders"
    x = inputs()
    assert_matches(imported(store, "imported-tiny-transcoders-L1"), *circuit_tracer(layers[1][0], x), x)


def test_a_release_with_a_converter_the_workbench_lacks_is_refused_before_any_download(store, offline_hub):
    pytest.importorskip("sae_lens", reason="the release directory comes with sae-lens")
    before = unchanged(store)
    with pytest.raises(
        DictionaryError, match=r"(?s)llama_scope.*SAE.from_pretrained\('llama_scope_lxr_8x', 'l0r_8x'\)"
    ):
        run_import(ImportConfig(store=str(store), source="llama_scope_lxr_8x/l0r_8x"))
    assert unchanged(store) == before


def test_import_help_teaches_the_three_source_forms():
    shown = run_cli_in_process("import", "--help")
    assert shown.returncode == 0
    for text in (
        "RELEASE/ID",
        "hf://OWNER/REPO",
        "gemma-scope-2-270m-pt-res/",
        "huggingface-cli download",
        "circuit-tracer",
    ):
        assert text in shown.stdout, text
