"""Every supported model family, on tiny random models: hooks, attribution, depth probes, per-head outputs.

One 2-layer model per family (models/registry.py builds them): Llama, GPT-2 (LayerNorm, learned positions,
Conv1D), GPT-NeoX (parallel attention and MLP, partial rotary), Gemma 3 (pre- and post-norms, GeGLU, sliding
and global layers, query-key norms) and Qwen 3 (query-key norms). Gemma 3 and Qwen 3 have 4 heads of 32, so
their attn.hook_z (128 values) is wider than d_model (64).
"""

import numpy as np
import pytest
import torch

from workbench.errors import ModelLoadError
from workbench.hooks import HOOK_KINDS, HookPoint
from workbench.models import families, load_hf_model, make_backend, resolve_model_dir
from workbench.models.backends import LayerSkip

FAMILIES = ["tiny", "tiny-gpt2", "tiny-neox", "tiny-gemma3", "tiny-qwen3"]
EXPECTED_FAMILY = {
    "tiny": "llama",
    "tiny-gpt2": "gpt2",
    "tiny-neox": "neox",
    "tiny-gemma3": "gemma",
    "tiny-qwen3": "llama",
}
EVERY_HOOK = [HookPoint(layer, kind) for layer in range(2) for kind in HOOK_KINDS]
PROMPT = "When Mary and John went to the store, John gave a drink to"


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, models_dir):
    """(registry name, HF model, tokenizer, {backend name: backend}), loaded once per family. The nnsight backend
    wraps the returned HF model; TransformerLens's bridge gets its own copy, because it rewires the model's blocks."""
    model_dir = resolve_model_dir(request.param, models_dir)
    hf_model, tokenizer = load_hf_model(model_dir)
    backends = {
        "nnsight": make_backend("nnsight", hf_model, tokenizer),
        "transformerlens": make_backend("transformerlens", *load_hf_model(model_dir)),
    }
    return request.param, hf_model, tokenizer, backends


def _ids(batch=2, seq=20):
    return torch.randint(0, 1000, (batch, seq), generator=torch.Generator().manual_seed(1))


def _close(a, b, rtol=1e-5):
    scale = max(b.abs().max().item(), 1e-6)
    assert (a - b).abs().max().item() <= rtol * scale, f"max diff {(a - b).abs().max().item():.2e}, scale {scale:.2e}"


def test_both_backends_agree_and_every_hook_is_the_models_own_maths(family):
    name, hf_model, _, backends = family
    spec = families.family_of(hf_model)
    assert spec.name == EXPECTED_FAMILY[name]
    ids = _ids()
    lens = backends["transformerlens"].capture(ids, EVERY_HOOK)
    sight = backends["nnsight"].capture(ids, EVERY_HOOK)
    for hook in EVERY_HOOK:
        _close(lens[hook], sight[hook])
    n_heads, d_head = families.attention_heads(hf_model)
    with torch.no_grad():
        output = hf_model(ids, output_hidden_states=True)
        for layer, block in enumerate(families.decoder_layers(hf_model)):
            at = {kind: sight[HookPoint(layer, kind)] for kind in HOOK_KINDS}
            assert at["attn.hook_z"].shape[-1] == n_heads * d_head
            _close(at["hook_in"], output.hidden_states[layer])
            attention = getattr(getattr(block, spec.attention), spec.out_proj)(at["attn.hook_z"])
            if spec.post_attn_norm:
                attention = getattr(block, spec.post_attn_norm)(attention)
            _close(at["attn.hook_out"], attention)
            mid = at["hook_in"] if spec.parallel(hf_model) else at["hook_in"] + at["attn.hook_out"]
            _close(at["mlp.hook_in"], getattr(block, spec.mlp_norm)(mid))
            mlp = block.mlp(at["mlp.hook_in"])
            if spec.post_mlp_norm:
                mlp = getattr(block, spec.post_mlp_norm)(mlp)
            _close(at["mlp.hook_out"], mlp)
            _close(at["hook_out"], at["hook_in"] + at["attn.hook_out"] + at["mlp.hook_out"])
        final = families.part(hf_model, spec.final_norm)(sight[HookPoint(1, "hook_out")])
        _close(hf_model.get_output_embeddings()(final), output.logits, 1e-4)


def test_attribution_edges_sum_exactly_to_each_target(family):
    from workbench.circuits.attribute import Targets, build_graph
    from workbench.circuits.deembed import de_embeddings
    from workbench.circuits.replacement import TranscoderSet
    from workbench.dictionaries import DictionaryConfig, make_dictionary

    _, hf_model, tokenizer, _ = family
    torch.manual_seed(0)
    coders = {
        layer: make_dictionary(DictionaryConfig(arch="topk", d_in=64, n_latents=64, k=4, transcoder=True)).eval()
        for layer in range(2)
    }
    graph = build_graph(hf_model, tokenizer, PROMPT, TranscoderSet(coders), Targets(max_logits=1))
    ids = torch.tensor([[tokenizer.bos_token_id, *tokenizer(PROMPT, add_special_tokens=False)["input_ids"]]])
    with torch.no_grad():
        real = hf_model(ids).logits[0, -1]
    # The frozen replacement is exact; targets are demeaned logits, as circuit-tracer's are.
    assert graph.targets[0].activation == pytest.approx((real.max() - real.mean()).item(), abs=1e-4)
    kinds = np.array([node.kind for node in graph.nodes])
    assert (kinds == "feature").sum() >= 40
    values = np.array([node.activation for node in graph.nodes])
    targets = np.flatnonzero(np.isin(kinds, ("feature", "logit")))
    assert np.abs(graph.adjacency.sum(1) + graph.bias - values)[targets].max() < 1e-4
    # De-embeddings run on every family; the direct path's best token scores what a direct computation gives.
    spec = families.family_of(hf_model)
    result = de_embeddings(hf_model, tokenizer, coders[1], 1, 0, n=3)
    embedding = hf_model.get_input_embeddings()
    reader = coders[1].W_enc[:, 0] * families.norm_gain(getattr(families.decoder_layers(hf_model)[1], spec.mlp_norm))
    scores = embedding.weight.float() @ reader * float(getattr(embedding, "embed_scale", 1.0))
    assert result.direct[0][1] == pytest.approx(scores.max().item(), rel=1e-5)


@pytest.mark.parametrize("backend", ["transformerlens", "nnsight"])
def test_a_skip_pass_resumed_from_the_clean_residual_equals_the_full_skip_pass(family, backend):
    runner = family[3][backend]
    ids = _ids()
    clean = runner.run(ids, [HookPoint(0, "hook_in"), HookPoint(0, "hook_out")], logits=True)
    later = [HookPoint(1, "hook_in"), HookPoint(1, "hook_out")]
    full = runner.run(ids, later, logits=True, skip=LayerSkip(0, 10))
    resume = (clean.acts[HookPoint(0, "hook_in")], clean.acts[HookPoint(0, "hook_out")])
    resumed = runner.run(ids, later, logits=True, skip=LayerSkip(0, 10, resume=resume))
    assert full.logits is not None and resumed.logits is not None and clean.logits is not None
    assert (full.logits - clean.logits).abs().max() > 1e-3  # the skip changes the output
    _close(resumed.logits, full.logits)
    for hook in later:
        _close(resumed.acts[hook], full.acts[hook])
    # The model is left as it was: a plain pass gives the clean logits again.
    _close(runner.run(ids, [], logits=True).logits, clean.logits)


def test_codebooks_and_head_writes_read_what_the_hooks_read(family, models_dir):
    """Codebook sites sit on the same modules as the hooks (Gemma's post-norms included), and the per-head writes
    that the code method clusters add up to the attention's output projection."""
    from workbench.circuits.codes import head_writes
    from workbench.codebooks.attach import CodebookModel

    name, hf_model, _, backends = family
    ids = _ids()
    points = [HookPoint(1, "attn.hook_out"), HookPoint(1, "mlp.hook_out"), HookPoint(0, "attn.hook_z")]
    hooks = backends["nnsight"].capture(ids, points + [HookPoint(1, "attn.hook_z")])
    copy, _ = load_hf_model(resolve_model_dir(name, models_dir))  # a codebook model hooks the HF model for good
    coded = CodebookModel(copy, [p.name for p in points], n_codes=8)
    coded.enabled = False  # the plain model, recording what each site sees
    with torch.no_grad():
        _close(coded(ids).logits, hf_model(ids).logits)
    for point in points:
        _close(coded.inputs[point.name], hooks[point])
    spec = families.family_of(hf_model)
    writes = head_writes(backends["nnsight"], ids)  # [prompts, layers * heads, d] at the last position
    n_heads, _ = families.attention_heads(hf_model)
    for layer, block in enumerate(families.decoder_layers(hf_model)):
        W_O, b_O = families.output_weights(getattr(block, spec.attention), spec)
        total = writes[:, layer * n_heads : (layer + 1) * n_heads].sum(1) + (0 if b_O is None else b_O)
        with torch.no_grad():
            projected = getattr(getattr(block, spec.attention), spec.out_proj)(hooks[HookPoint(layer, "attn.hook_z")])
        _close(total, projected[:, -1])


def test_depth_probes_run_and_the_last_layers_lens_is_the_output(family, tmp_path, models_dir):
    from workbench.probes.depth import DepthProbeConfig, run_depth_probes
    from workbench.store import Store

    name = family[0]
    (tmp_path / "models").symlink_to(models_dir, target_is_directory=True)
    config = DepthProbeConfig(
        model=name, store=str(tmp_path), tokens=256, context_len=32, lens_tokens=64, skip_tokens=64, name="p"
    )
    run_depth_probes(config, progress=False)
    with Store.open_existing(tmp_path).reader() as con:
        lens = dict(con.execute("SELECT layer, kl_mean FROM probe_logit_lens WHERE probe_run = 'p'").fetchall())
        skips = con.execute("SELECT count(*) FROM probe_skip_layers WHERE probe_run = 'p'").fetchone()[0]
    assert lens[1] < 1e-4 < lens[0]  # the lens at the last layer is the model's own output
    assert skips == 1  # skipping layer 0 affects layer 1


def test_per_head_outputs_wider_than_d_model_are_harvested_trained_and_spliced(tmp_path, models_dir):
    """Gemma 3's attn.hook_z holds 4 x 32 = 128 values per token against d_model 64."""
    from workbench.evaluate import EvalConfig, run_eval
    from workbench.harvest import HarvestConfig, run_harvest
    from workbench.store import Store, lookups
    from workbench.train import TrainConfig, run_train

    (tmp_path / "models").symlink_to(models_dir, target_is_directory=True)
    store = str(tmp_path)
    hooks = ["blocks.1.attn.hook_z", "blocks.1.hook_out"]
    run_harvest(HarvestConfig(model="tiny-gemma3", hooks=hooks, store=store, tokens=2048, run="h"), progress=False)
    assert lookups.hook_widths(Store.open_existing(store), "h") == {
        "blocks.1.attn.hook_z": 128,
        "blocks.1.hook_out": 64,
    }
    train = TrainConfig(
        store=store, hook="blocks.1.attn.hook_z", k=8, latents=256, tokens=8192, batch_size=256, name="z"
    )
    run_train(train, progress=False)
    result = run_eval(EvalConfig(store=store, dictionary="z", ce_tokens=256))
    evaluation = result.evaluation
    assert evaluation.fvu < 1.0  # it learned something about the heads' outputs
    assert evaluation.ce_spliced != pytest.approx(evaluation.ce_clean, abs=1e-6)  # the splice went into the model


def test_an_unsupported_family_gets_an_error_that_names_what_is_missing():
    from transformers import OPTConfig, OPTForCausalLM

    opt = OPTForCausalLM(
        OPTConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1, ffn_dim=32, num_attention_heads=2)
    )
    with pytest.raises(ModelLoadError, match=r"not a supported model family.*has no .*families\.py"):
        families.family_of(opt)
    with pytest.raises(ModelLoadError, match="not a supported model family"):
        make_backend("nnsight", opt, None)


def test_a_gguf_that_does_not_dequantize_is_refused_and_builds_nothing(tmp_path):
    from workbench.models.registry import _dequantize_gguf

    (tmp_path / "broken.gguf").write_bytes(b"GGUF" + bytes(range(256)) * 64)  # a header and then nonsense
    with pytest.raises(ModelLoadError, match=r"broken\.gguf did not dequantize into a Gemma 3 270M model.*reinstall"):
        _dequantize_gguf(tmp_path, "broken.gguf", tmp_path / "out", "Gemma 3 270M")
    assert not (tmp_path / "out").exists()
