"""SAELens interoperability: our files load in sae_lens and agree to 1e-5, and theirs import into ours.

sae-lens comes from the `saelens` extra, which `make setup` installs; these tests are skipped with
a message where it is missing rather than failing on an import.
"""

import json

import pytest
import torch

from workbench.dictionaries import DictionaryConfig, load_dictionary, make_dictionary
from workbench.dictionaries.base import DictionaryError

sae_lens = pytest.importorskip("sae_lens", reason="sae-lens is in the saelens extra: pip install -e '.[saelens]'")
from sae_lens import SAE  # noqa: E402

TOLERANCE = 1e-5


def randomised(config: DictionaryConfig, seed: int = 0):
    """A dictionary with every tensor non-trivial: biases, thresholds and skip terms all matter."""
    torch.manual_seed(seed)
    model = make_dictionary(config).eval()
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name in model.training_buffers:
                continue
            if name == "threshold":
                tensor.copy_(torch.rand_like(tensor) * 0.3)
            elif name == "W_dec":
                tensor.copy_(torch.nn.functional.normalize(torch.randn_like(tensor), dim=1))
            else:
                tensor.copy_(torch.randn_like(tensor) * (0.05 if name.startswith("b_") or name == "W_skip" else 0.3))
    return model


CASES = {
    "topk": dict(arch="topk"),
    "batchtopk": dict(arch="batchtopk"),
    "matryoshka": dict(arch="matryoshka"),
    "featurechoice": dict(arch="featurechoice"),  # per-latent thresholds
    "transcoder": dict(arch="batchtopk", transcoder=True, d_out=24),
    "skip-transcoder": dict(arch="batchtopk", transcoder=True, skip_connection=True, d_out=24),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_sae_lens_loads_our_files_and_agrees(tmp_path, case):
    config = DictionaryConfig(d_in=16, n_latents=64, k=6, **CASES[case])
    ours = randomised(config)
    ours.save(tmp_path / case, {"model_name": "tiny", "hook_name": "blocks.1.hook_resid_post"})
    theirs = SAE.load_from_disk(tmp_path / case)
    x = torch.randn(200, 16) * 2
    with torch.no_grad():
        f_ours, f_theirs = ours.encode(x), theirs.encode(x)
        assert (f_ours != 0).float().sum(-1).mean() > 1  # the comparison is not between two zero tensors
        torch.testing.assert_close(f_theirs, f_ours, atol=TOLERANCE, rtol=0)
        torch.testing.assert_close(theirs(x), ours.reconstruct(x), atol=TOLERANCE, rtol=0)
        torch.testing.assert_close(
            theirs.decode(f_ours),
            ours.decode(f_ours, x) - (x @ ours.W_skip if config.skip_connection else 0),
            atol=TOLERANCE,
            rtol=0,
        )
    assert theirs.cfg.metadata.hook_name == "blocks.1.hook_resid_post"


def test_families_without_a_sae_lens_equivalent_are_refused_by_name_not_loaded_wrongly(tmp_path):
    ours = randomised(DictionaryConfig(arch="topk", d_in=16, n_latents=64, k=6, transcoder=True, d_out=24))
    ours.save(tmp_path / "topk-transcoder")
    assert json.loads((tmp_path / "topk-transcoder" / "cfg.json").read_text())["architecture"] == "workbench.topk"
    with pytest.raises(Exception, match="workbench.topk"):
        SAE.load_from_disk(tmp_path / "topk-transcoder")
    reloaded = load_dictionary(tmp_path / "topk-transcoder")  # we still load it ourselves
    x = torch.randn(10, 16)
    assert torch.equal(reloaded.reconstruct(x), ours.reconstruct(x))


def _their_sae(architecture: str, **cfg):
    from sae_lens.saes.sae import get_sae_class

    sae_cls, cfg_cls = get_sae_class(architecture)
    sae = sae_cls(cfg_cls(d_in=16, d_sae=64, **cfg))
    with torch.no_grad():
        for tensor in sae.state_dict().values():
            tensor.copy_(torch.randn_like(tensor) * 0.3)
        if hasattr(sae, "threshold"):
            sae.threshold.copy_(torch.rand_like(sae.threshold) * 0.3)
    return sae.eval()


@pytest.mark.parametrize(
    "architecture,cfg",
    [
        ("topk", dict(k=6, rescale_acts_by_decoder_norm=True)),  # norms folded into our encoder
        ("topk", dict(k=6, rescale_acts_by_decoder_norm=False)),
        ("standard", dict(apply_b_dec_to_input=False)),  # ReLU -> threshold 0; b_dec folded into b_enc
        ("jumprelu", dict()),
        ("jumprelu_transcoder", dict(d_out=24, apply_b_dec_to_input=False)),
    ],
)
def test_sae_lens_dictionaries_import_exactly(tmp_path, architecture, cfg):
    theirs = _their_sae(architecture, **cfg)
    theirs.save_model(tmp_path / "theirs")
    ours = load_dictionary(tmp_path / "theirs")
    x = torch.randn(200, 16) * 2
    with torch.no_grad():
        f_theirs = theirs.encode(x)
        assert (f_theirs != 0).float().sum(-1).mean() > 1
        torch.testing.assert_close(ours.encode(x), f_theirs, atol=TOLERANCE, rtol=0)
        torch.testing.assert_close(ours.reconstruct(x), theirs(x), atol=TOLERANCE, rtol=0)
    # and back: what we write from an import is what SAELens had
    ours.save(tmp_path / "ours")
    again = SAE.load_from_disk(tmp_path / "ours")
    with torch.no_grad():
        torch.testing.assert_close(again(x), theirs(x), atol=TOLERANCE, rtol=0)


def test_unsupported_sae_lens_settings_are_refused(tmp_path):
    theirs = _their_sae("topk", k=6, normalize_activations="expected_average_only_in")
    theirs.save_model(tmp_path / "theirs")
    with pytest.raises(DictionaryError, match="normalize_activations"):
        load_dictionary(tmp_path / "theirs")


def test_a_transcoder_trained_in_a_store_loads_in_sae_lens_and_agrees_on_real_activations(store_dir):
    from workbench.harvest import HarvestConfig, run_harvest
    from workbench.store import Store

    from conftest import run_cli

    run_harvest(
        HarvestConfig(
            model="tiny",
            hooks=["blocks.1.mlp.hook_in", "blocks.1.mlp.hook_out"],
            store=str(store_dir),
            tokens=4096,
            run="m",
        ),
        progress=False,
    )
    result = run_cli(
        "train",
        "--store",
        str(store_dir),
        "--arch",
        "transcoder",
        "--in",
        "blocks.1.mlp.hook_in",
        "--out",
        "blocks.1.mlp.hook_out",
        "--k",
        "8",
        "--latents",
        "128",
        "--tokens",
        "40k",
        "--batch-size",
        "512",
        "--name",
        "tc",
    )
    assert result.returncode == 0, result.stderr
    theirs = SAE.load_from_disk(store_dir / "dictionaries" / "tc")
    assert theirs.cfg.architecture() == "jumprelu_transcoder"
    assert theirs.cfg.metadata.hook_name == "blocks.1.mlp.hook_in" and theirs.cfg.metadata.model_name == "tiny"
    ours = load_dictionary(store_dir / "dictionaries" / "tc")
    store = Store.open_existing(store_dir)
    _, x = next(store.iter_activations("m", "blocks.1.mlp.hook_in"))
    x = torch.from_numpy(x)
    with torch.no_grad():
        torch.testing.assert_close(theirs.encode(x), ours.encode(x), atol=TOLERANCE, rtol=0)
        torch.testing.assert_close(theirs(x), ours.reconstruct(x), atol=TOLERANCE, rtol=0)
    assert float((ours.encode(x) != 0).sum(-1).float().mean()) > 1


def test_import_registers_a_sae_lens_dictionary_and_refuses_a_width_mismatch(store_dir, tmp_path):
    from workbench.harvest import HarvestConfig, run_harvest
    from workbench.store import Store

    from conftest import run_cli, run_cli_in_process, store_snapshot

    run_harvest(
        HarvestConfig(model="tiny", hooks=["blocks.1.hook_out"], store=str(store_dir), tokens=2048, run="h"),
        progress=False,
    )
    from sae_lens.saes.sae import get_sae_class

    sae_cls, cfg_cls = get_sae_class("topk")
    sae_cls(cfg_cls(d_in=64, d_sae=128, k=8)).save_model(tmp_path / "fits")
    sae_cls(cfg_cls(d_in=16, d_sae=128, k=8)).save_model(tmp_path / "too-narrow")

    before = store_snapshot(store_dir)
    # The refusals run in this process (no interpreter start-up each); the import that succeeds runs as a user would.
    bad = run_cli_in_process(
        "import", str(tmp_path / "too-narrow"), "--store", str(store_dir), "--hook", "blocks.1.hook_resid_post"
    )
    assert bad.returncode == 2 and "Dimension mismatch" in bad.stderr and "width is 16" in bad.stderr, bad.stderr
    assert store_snapshot(store_dir) == before
    pickle = tmp_path / "evil"
    pickle.mkdir()
    torch.save({"W_enc": torch.zeros(1)}, pickle / "sae.pt")
    bad = run_cli_in_process("import", str(pickle), "--store", str(store_dir), "--hook", "blocks.1.hook_out")
    assert bad.returncode == 2 and "only safetensors" in bad.stderr
    assert store_snapshot(store_dir) == before

    good = run_cli(
        "import",
        str(tmp_path / "fits"),
        "--store",
        str(store_dir),
        "--hook",
        "blocks.1.hook_resid_post",
        "--name",
        "theirs",
    )
    assert good.returncode == 0, good.stderr
    with Store.open_existing(store_dir).reader() as con:
        assert con.execute("SELECT arch, hook, k, status FROM dictionaries WHERE name = 'theirs'").fetchone() == (
            "topk",
            "blocks.1.hook_out",
            8,
            "complete",
        )
    encoded = run_cli_in_process("encode", "--store", str(store_dir), "--dict", "theirs")
    assert encoded.returncode == 0, encoded.stderr
