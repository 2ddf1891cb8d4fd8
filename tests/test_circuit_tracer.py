"""Transcoders and cross-layer transcoders in circuit-tracer's own formats, checked by circuit-tracer's own loaders
(circuit-tracer 0.5, installed with --no-deps: its transcoder modules need only torch and safetensors), and
attribution graphs through cross-layer transcoders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from workbench.models import load_hf_model

from conftest import run_cli, run_cli_in_process, store_snapshot

PROMPT = "When Mary and John went to the store, John gave a drink to"


@pytest.fixture(scope="module")
def clt_store(tmp_path_factory, models_dir):
    """The tiny model's MLP inputs and outputs at both layers, per-layer BatchTopK transcoders and a CLT over both."""
    from workbench.harvest import HarvestConfig, run_harvest
    from workbench.train import TrainConfig, run_train

    root = tmp_path_factory.mktemp("ct") / "store"
    root.mkdir()
    (root / "models").symlink_to(models_dir, target_is_directory=True)
    hooks = [f"blocks.{l}.mlp.hook_{d}" for l in (0, 1) for d in ("in", "out")]
    run_harvest(HarvestConfig(model="tiny", hooks=hooks, store=str(root), tokens=8192, run="h"), progress=False)
    common = dict(store=str(root), k=[8], latents=[128], tokens=40_000, batch_size=512)
    for layer in (0, 1):
        run_train(TrainConfig(hook=[f"blocks.{layer}.mlp.hook_in"], hook_out=[f"blocks.{layer}.mlp.hook_out"],
                              arch="batchtopk", name=f"tc{layer}", **common), progress=False)  # fmt: skip
    run_train(TrainConfig(arch="topk", hook=["blocks.0.mlp.hook_in"], hook_out=["blocks.0.mlp.hook_out"],
                          name="topk0", **common | {"tokens": 4096}), progress=False)  # fmt: skip
    # Half the k per layer: each layer's features also write into the later layer, like two transcoders' worth.
    result = run_cli("train", "--store", str(root), "--arch", "clt", "--layers", "0-1", "--k", "4", "--latents",
                     "128", "--tokens", "40k", "--batch-size", "512", "--name", "clt")  # fmt: skip
    assert result.returncode == 0, result.stderr
    return root


def _inputs(n: int = 64, d: int = 64) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(0))


def test_a_transcoder_set_exports_to_circuit_tracer_and_imports_back_unchanged(clt_store, tmp_path):
    from circuit_tracer.transcoder.single_layer_transcoder import load_transcoder_set

    from workbench.dictionaries import load_dictionary

    out = tmp_path / "set"
    result = run_cli("export", "circuit-tracer", "--store", str(clt_store), "--dict", "tc0,tc1", "--out", str(out))
    assert result.returncode == 0, result.stderr
    theirs = load_transcoder_set({layer: str(out / f"layer_{layer}.safetensors") for layer in (0, 1)},
                                 scan="tc", feature_input_hook="ln2.hook_normalized",
                                 feature_output_hook="hook_mlp_out", device=torch.device("cpu"),
                                 lazy_encoder=False, lazy_decoder=False)  # fmt: skip
    x = _inputs()
    for layer in (0, 1):
        ours = load_dictionary(clt_store / "dictionaries" / f"tc{layer}").eval()
        with torch.no_grad():
            acts = ours.encode(x)
            assert (acts > 0).any(1).float().mean() > 0.5  # the comparison is not between two zero matrices
            torch.testing.assert_close(theirs[layer].encode(x), acts, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(theirs[layer].decode(acts), ours.decode(acts), atol=1e-5, rtol=1e-5)
    # And back: `workbench import` reads the folder as the same two transcoders.
    result = run_cli("import", str(out), "--store", str(clt_store), "--name", "back")
    assert result.returncode == 0, result.stderr
    for layer in (0, 1):
        ours = load_dictionary(clt_store / "dictionaries" / f"tc{layer}").eval()
        back = load_dictionary(clt_store / "dictionaries" / f"back-L{layer}").eval()
        with torch.no_grad():
            torch.testing.assert_close(back.encode(x), ours.encode(x), atol=1e-6, rtol=1e-6)
            torch.testing.assert_close(back.reconstruct(x), ours.reconstruct(x), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize(
    "dicts, message",
    [
        ("topk0,tc1", "cannot express"),  # TopK fires by rank, circuit-tracer's transcoders by threshold
        ("tc1", "layers 0 have none"),  # circuit-tracer's sets start at layer 0
    ],
)
def test_exports_circuit_tracer_cannot_read_are_refused_and_write_nothing(clt_store, tmp_path, dicts, message):
    out = tmp_path / "refused"
    result = run_cli_in_process("export", "circuit-tracer", "--store", str(clt_store), "--dict", dicts, "--out",
                                str(out))  # fmt: skip
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert not out.exists() and not (tmp_path / "refused.partial").exists()


def test_the_clt_trains_its_layers_together_and_both_decoding_paths_agree(clt_store):
    from workbench.dictionaries import load_dictionary
    from workbench.store import Store, lookups

    store = Store.open_existing(clt_store)
    record = lookups.completed_dictionary(store, "clt")
    assert (record.arch, record.hook, record.hook_out) == ("clt", "blocks.0.mlp.hook_in", "blocks.1.mlp.hook_out")
    assert record.train_l0 == pytest.approx(2 * 4, rel=0.01)  # k per layer x 2 layers
    # At half the per-layer set's total L0 (8 against 16), over the same tokens, it reconstructs both MLP outputs
    # about as well (0.85 against 0.80 and 0.87 measured; the tiny random model's MLPs are hard to compress).
    per_layer = [lookups.completed_dictionary(store, f"tc{layer}").train_fvu for layer in (0, 1)]
    assert record.train_fvu < 1.1 * float(np.mean(per_layer)), (record.train_fvu, per_layer)
    clt = load_dictionary(clt_store / record.path).eval()
    x = torch.randn(32, 2 * 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        f = clt.encode(x)
        concatenated = clt.decode(f)
        features = {layer: clt.layer_encode(layer, x[:, layer * 64 : (layer + 1) * 64]) for layer in (0, 1)}
        torch.testing.assert_close(torch.cat([features[0], features[1]], 1), f)
        for layer in (0, 1):  # layer by layer, as attribution reads it, equals the training loop's concatenation
            torch.testing.assert_close(clt.decode_into(layer, features), concatenated[:, layer * 64 : (layer + 1) * 64])
    # Layer 0's features write into layer 1 too: the decoder there is trained, not left at zero.
    assert clt.W_dec[0][:, 1].norm() > 0.1


def test_the_clt_exports_to_circuit_tracers_format_and_computes_the_same(clt_store, tmp_path):
    from circuit_tracer.transcoder.cross_layer_transcoder import load_clt

    from workbench.dictionaries import load_dictionary

    out = tmp_path / "clt"
    result = run_cli("export", "circuit-tracer", "--store", str(clt_store), "--dict", "clt", "--out", str(out))
    assert result.returncode == 0, result.stderr
    theirs = load_clt(str(out), device=torch.device("cpu"), dtype=torch.float32, lazy_decoder=False)
    ours = load_dictionary(clt_store / "dictionaries" / "clt").eval()
    x = torch.randn(2, 16, 64, generator=torch.Generator().manual_seed(2))  # [layers, positions, d]
    with torch.no_grad():
        their_features = theirs.encode(x)  # [layers, positions, latents]
        our_features = ours.encode(x.transpose(0, 1).reshape(16, 128)).view(16, 2, -1).transpose(0, 1)
        assert (our_features > 0).sum() > 16
        torch.testing.assert_close(their_features, our_features, atol=1e-5, rtol=1e-5)
        their_recon = theirs(x)  # [layers, positions, d]
        our_recon = ours.decode(ours.encode(x.transpose(0, 1).reshape(16, 128))).view(16, 2, 64).transpose(0, 1)
        torch.testing.assert_close(their_recon, our_recon, atol=1e-4, rtol=1e-4)


def test_attribution_through_a_clt_is_exact_and_equals_the_transcoder_set_it_can_be(clt_store, tiny_dir):
    """A CLT whose decoders into later layers are zero is a per-layer transcoder set: the two graphs are equal."""
    from workbench.circuits.attribute import Targets, build_graph
    from workbench.circuits.replacement import CLTReplacement, TranscoderSet
    from workbench.dictionaries import load_dictionary
    from workbench.dictionaries.base import make_dictionary
    from workbench.dictionaries.clt import clt_config

    model, tokenizer = load_hf_model(tiny_dir)
    clt = load_dictionary(clt_store / "dictionaries" / "clt").eval()
    graph = build_graph(model, tokenizer, PROMPT, CLTReplacement(clt), Targets([" to"]))
    ids = torch.tensor([[tokenizer.bos_token_id, *tokenizer(PROMPT, add_special_tokens=False)["input_ids"]]])
    with torch.no_grad():
        real = model(ids).logits[0, -1]
    to = tokenizer(" to", add_special_tokens=False)["input_ids"][0]
    assert graph.targets[0].activation == pytest.approx((real[to] - real.mean()).item(), abs=1e-4)
    kinds = graph.kinds
    values = np.array([n.activation for n in graph.nodes])
    rows = np.flatnonzero(np.isin(kinds, ("feature", "logit")))
    assert np.abs(graph.adjacency.sum(1) + graph.bias - values)[rows].max() < 1e-4
    # The same weights as two per-layer transcoders, cross-layer decoders zeroed, give exactly the same graph.
    pair = {layer: load_dictionary(clt_store / "dictionaries" / f"tc{layer}").eval() for layer in (0, 1)}
    as_clt = make_dictionary(clt_config([0, 1], 64, 128, 8)).eval()
    with torch.no_grad():
        for i, coder in pair.items():
            as_clt.W_enc[i] = coder.W_enc
            as_clt.b_enc[i] = coder.b_enc
            as_clt.threshold[i] = coder.threshold
            as_clt.b_dec[i * 64 : (i + 1) * 64] = coder.b_dec
            as_clt.W_dec[i].zero_()
            as_clt.W_dec[i][:, 0] = coder.W_dec
    one = build_graph(model, tokenizer, PROMPT, CLTReplacement(as_clt), Targets([" to"]))
    other = build_graph(model, tokenizer, PROMPT, TranscoderSet(pair), Targets([" to"]))
    assert [n.node_id for n in one.nodes] == [n.node_id for n in other.nodes]
    np.testing.assert_allclose(one.adjacency, other.adjacency, atol=1e-5)


def test_the_cli_graphs_through_a_clt_and_refuses_mixes_and_mismatches(clt_store):
    result = run_cli("circuit", "graph", "--prompt", PROMPT, "--transcoders", "clt", "--store", str(clt_store),
                     "--target", " to", "--name", "through-clt")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "replacement score" in result.stdout
    before = store_snapshot(clt_store)
    result = run_cli_in_process("circuit", "graph", "--prompt", PROMPT, "--transcoders", "clt,tc0", "--store",
                                str(clt_store))  # fmt: skip
    assert result.returncode == 2 and "give it alone" in result.stderr, result.stderr
    result = run_cli_in_process("train", "--store", str(clt_store), "--arch", "clt", "--layers", "0-3", "--tokens",
                                "4096", "--batch-size", "512", "--latents", "64", "--k", "4")  # fmt: skip
    assert result.returncode == 2 and "blocks.2.mlp.hook_in" in result.stderr, result.stderr
    result = run_cli_in_process("train", "--store", str(clt_store), "--arch", "clt", "--layers", "1-0")
    assert result.returncode == 2 and "consecutive layers" in result.stderr, result.stderr
    assert store_snapshot(clt_store) == before


# -- circuit-tracer's own server and page, in a real browser -----------------------------------------------

CHROMIUM = "/usr/bin/chromium"
JS = Path(__file__).resolve().parent.parent / ".venv" / "js" / "node_modules"
# The page's scripts from the web, served from the npm copies `make browser` installs (the test has no network).
WEB_SCRIPTS = {
    "static_js/lib/d3.js": JS / "d3-jetpack" / "build" / "d3v7+jetpack.js",  # d3 7 with d3-jetpack in one file
    "dagre.min.js": JS / "dagre" / "dist" / "dagre.min.js",
    "pako.min.js": JS / "pako" / "dist" / "pako.min.js",
}


# The page's own d3-jetpack (jetpack_2024-07-20.js) is newer than npm's 2.3, whose d3 7 bundle differs in two
# ways the page notices: it attaches its selection methods (appendMany, at, st, ...) to a second, unexported copy
# of d3-selection, and its conventions() has no c.drawAxis(svg). The test mends both in the served text.
JETPACK_FIXES = {
    "selection.prototype.prop = selection.prototype.property;": (
        '["translate","append","insert","parent","selectAppend","tspans","appendMany","at","st","prop"].forEach('
        "function (k) { selection$1.prototype[k] = selection.prototype[k]; });"
        '["translate","at","st"].forEach(function (k) { transition$1.prototype[k] = transition.prototype[k]; });'
    ),
    "    return c;\n  }\n\n  function drawAxis(c){": (
        "    c.drawAxis = function (svg) { return drawAxis(Object.assign({}, c, {svg: svg || c.svg})); };\n"
    ),
}


def _script(path: Path) -> str:
    text = path.read_text()
    if path.name == "d3v7+jetpack.js":
        for anchor, fix in JETPACK_FIXES.items():
            assert anchor in text, "d3-jetpack's bundle changed: check JETPACK_FIXES"
            text = text.replace(anchor, anchor + fix if anchor.startswith("selection") else fix + anchor)
    return text


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_circuit_tracers_server_serves_the_export_and_its_page_draws_it(clt_store, tmp_path):
    from circuit_tracer.frontend import serve
    from playwright.sync_api import sync_playwright

    from workbench.encode import EncodeConfig, run_encode

    missing = [str(path) for path in WEB_SCRIPTS.values() if not path.exists()]
    if missing or not Path(CHROMIUM).exists():
        pytest.fail(f"The browser test needs Chromium and the page's scripts: run `make browser` ({missing}).")
    for layer in (0, 1):  # feature files carry example contexts from the encoding
        run_encode(EncodeConfig(store=str(clt_store), dictionary=f"tc{layer}"), progress=False)
    result = run_cli("circuit", "graph", "--prompt", PROMPT, "--transcoders", "tc0,tc1", "--store", str(clt_store),
                     "--target", " to", "--name", "served", "--node-threshold", "0.9")  # fmt: skip
    assert result.returncode == 0, result.stderr
    served = tmp_path / "served"
    result = run_cli("circuit", "export", "served", "--out", str(served), "--store", str(clt_store))
    assert result.returncode == 0, result.stderr
    data = json.loads((served / "served.json").read_text())
    feature = next(n for n in data["nodes"] if n["feature_type"] == "cross layer transcoder")
    port = _free_port()
    server = serve(data_dir=str(served), port=port)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox",
                                                                                 "--disable-gpu"])  # fmt: skip
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))

            def from_npm(route) -> None:
                url = route.request.url
                local = next((path for suffix, path in WEB_SCRIPTS.items() if url.endswith(suffix)), None)
                # The page's other web scripts (hot reload, .npy parsing) are not used for local JSON graphs.
                body = _script(local) if local else "/* not needed offline */"
                route.fulfill(status=200, content_type="application/javascript", body=body)

            page.route("https://**/*", from_npm)
            page.goto(f"http://localhost:{port}/index.html?slug=served&clickedId={feature['node_id']}")
            page.wait_for_selector("text.node", timeout=30_000)
            drawn = page.locator("text.node").count()
            # Every node of the export is drawn (the frontend hides features active on over 2/3 of the tokens).
            assert drawn >= len([n for n in data["nodes"] if n["feature_type"] != "cross layer transcoder"]), drawn
            # The clicked feature's panel: its examples, one context each, with the tokens of its top example.
            feature_file = served / "features" / feature["dictionary"] / f"{feature['feature']}.json"
            examples = json.loads(feature_file.read_text())["examples_quantiles"]
            n_examples = sum(len(quantile["examples"]) for quantile in examples)
            assert n_examples >= 5
            page.wait_for_function(f"document.querySelectorAll('div.ctx-container').length >= {n_examples}",
                                   timeout=30_000)  # fmt: skip
            top_tokens = [token.strip() for token in examples[0]["examples"][0]["tokens"] if len(token.strip()) > 2]
            shown = page.locator("div.ctx-container").all_inner_texts()
            assert any(sum(token in text for token in top_tokens) >= 3 for text in shown), (top_tokens, shown[:3])
            assert not errors, errors
            browser.close()
    finally:
        server.stop()


def test_transcoders_and_clts_that_do_not_fit_the_model_are_refused_before_any_work(tiny_dir):
    from workbench.circuits.attribution import LoadedTranscoders, check_fits
    from workbench.circuits.replacement import CLTReplacement, TranscoderSet
    from workbench.circuits.tasks import TaskError
    from workbench.dictionaries import DictionaryConfig, make_dictionary
    from workbench.dictionaries.clt import clt_config

    model, _ = load_hf_model(tiny_dir)  # 2 layers, d_model 64
    narrow = make_dictionary(DictionaryConfig(arch="batchtopk", d_in=32, n_latents=64, k=4, transcoder=True))
    with pytest.raises(TaskError, match="maps 32 to 32 values; this model's MLPs read and write 64"):
        check_fits(model, LoadedTranscoders(TranscoderSet({0: narrow}), {0: "narrow"}, "tiny"))
    too_deep = make_dictionary(clt_config([0, 1, 2], 64, 16, 2))
    with pytest.raises(TaskError, match="covers layers 0-2 at width 64; this model has layers 0 to 1"):
        check_fits(model, LoadedTranscoders(CLTReplacement(too_deep), {0: "c", 1: "c", 2: "c"}, "tiny"))
