"""Gemma 3 270M, the second real pretrained model (slow: it loads a 1 GB fp32 model on 2 cores).

Gemma differs from SmolLM2's Llama layout in the ways that break naive hooks and attribution: norms after
attention and the MLP as well as before, (1 + weight) RMSNorm gains, embeddings scaled by sqrt(d_model),
sliding-window and global layers, query-key norms, 4 query heads of 256 (attn.hook_z is 1024 wide against
d_model 640) and a 262k vocabulary, which also means a different tokenizer from SmolLM2's.
"""

import numpy as np
import pytest
import torch

from workbench.hooks import HOOK_KINDS, HookPoint
from workbench.models import families, load_hf_model, make_backend, resolve_model_dir

pytestmark = pytest.mark.slow

IOI = "When Mary and John went to the store, John gave a drink to"


@pytest.fixture(scope="module")
def gemma(models_dir):
    model_dir = resolve_model_dir("gemma3-270m", models_dir)
    hf_model, tokenizer = load_hf_model(model_dir)
    return model_dir, hf_model, tokenizer


def _close(a, b, rtol):
    scale = max(b.abs().max().item(), 1e-6)
    assert (a - b).abs().max().item() <= rtol * scale, f"max diff {(a - b).abs().max().item():.2e}, scale {scale:.2e}"


def test_gemma3_270m_is_the_pretrained_base_model(gemma):
    _, hf_model, tokenizer = gemma
    assert families.family_of(hf_model).name == "gemma"
    assert families.attention_heads(hf_model) == (4, 256) and hf_model.config.hidden_size == 640
    ids = tokenizer(IOI, return_tensors="pt").input_ids
    with torch.no_grad():
        assert tokenizer.decode([hf_model(ids).logits[0, -1].argmax().item()]) == " Mary"


def test_both_backends_agree_at_every_hook_kind_and_sum_to_the_residual(gemma):
    model_dir, hf_model, tokenizer = gemma
    ids = torch.randint(0, 262_144, (2, 24), generator=torch.Generator().manual_seed(0))
    hooks = [HookPoint(layer, kind) for layer in (0, 5, 17) for kind in HOOK_KINDS]  # 5 is a global layer
    sight = make_backend("nnsight", hf_model, tokenizer).capture(ids, hooks)
    lens = make_backend("transformerlens", *load_hf_model(model_dir)).capture(ids, hooks)
    with torch.no_grad():
        hidden = hf_model(ids, output_hidden_states=True).hidden_states
    for hook in hooks:
        _close(lens[hook], sight[hook], 1e-4)
    for layer in (0, 5, 17):
        at = {kind: sight[HookPoint(layer, kind)] for kind in HOOK_KINDS}
        assert at["attn.hook_z"].shape[-1] == 1024
        _close(at["hook_in"], hidden[layer], 1e-5)
        _close(at["hook_in"] + at["attn.hook_out"] + at["mlp.hook_out"], at["hook_out"], 1e-5)


def test_harvest_train_eval_and_encode_through_both_backends(gemma, store_dir):
    from workbench.encode import EncodeConfig, run_encode
    from workbench.evaluate import EvalConfig, run_eval
    from workbench.harvest import HarvestConfig, run_harvest
    from workbench.store import Store
    from workbench.train import TrainConfig, run_train

    store = str(store_dir)
    hooks = ["blocks.6.attn.hook_z", "blocks.6.mlp.hook_in", "blocks.6.mlp.hook_out", "blocks.6.hook_out"]
    for backend in ("nnsight", "transformerlens"):
        config = HarvestConfig(model="gemma3-270m", hooks=hooks, store=store, tokens=2048, run=backend, backend=backend)
        run_harvest(config, progress=False)
    catalog = Store.open_existing(store)
    for hook in hooks:
        a = np.concatenate([x for _, x in catalog.iter_activations("nnsight", hook)])
        b = np.concatenate([x for _, x in catalog.iter_activations("transformerlens", hook)])
        assert a.shape == b.shape and a.shape[1] == (1024 if "hook_z" in hook else 640)
        assert np.abs(a - b).max() <= 1e-4 * np.abs(b).max(), hook
    run_train(
        TrainConfig(
            store=store,
            hook="blocks.6.hook_out",
            run="nnsight",
            k=16,
            latents=1024,
            tokens=8192,
            batch_size=512,
            name="sae",
        ),
        progress=False,
    )
    ce = {
        backend: run_eval(EvalConfig(store=store, dictionary="sae", ce_tokens=512, backend=backend)).evaluation
        for backend in ("nnsight", "transformerlens")
    }
    assert ce["nnsight"].ce_spliced == pytest.approx(ce["transformerlens"].ce_spliced, abs=1e-3)
    assert ce["nnsight"].ce_clean < ce["nnsight"].ce_spliced < ce["nnsight"].ce_zero_ablation
    encoded = run_encode(EncodeConfig(store=store, dictionary="sae"), progress=False)
    assert encoded.n_rows > 0


def test_linear_maps_between_smollm2_and_gemma_align_tokens_by_the_text_they_end(gemma, store_dir, models_dir):
    """Two tokenizers: tokens are paired where both end at the same character of the same document."""
    from workbench.corpus import tokenize_corpus
    from workbench.models import load_tokenizer
    from workbench.probes.linear_maps import LinearMapsConfig, align_tokens, run_linear_maps, token_keys
    from workbench.store import Store

    smollm2 = load_tokenizer(resolve_model_dir("smollm2-135m", models_dir))
    corpora = [tokenize_corpus("default", tok, 2048, 128, "text") for tok in (smollm2, gemma[2])]
    rows_a, rows_b = align_tokens(*(token_keys(c.doc_ids, c.char_ends) for c in corpora))
    text_tokens = min(int((c.doc_ids >= 0).sum()) for c in corpora)
    assert len(rows_a) > 0.5 * text_tokens  # most word ends are shared
    # Each aligned token's own text ends at the same character in both tokenizations.
    for corpus, rows, tokenizer in ((corpora[0], rows_a, smollm2), (corpora[1], rows_b, gemma[2])):
        decoded = [tokenizer.decode([int(corpus.vocab_ids[r])]) for r in rows[:200]]
        spans = corpus.char_ends[rows[:200]] - corpus.char_starts[rows[:200]]
        assert all(len(text) == span for text, span in zip(decoded, spans) if text.isascii())
    assert (corpora[0].char_ends[rows_a] == corpora[1].char_ends[rows_b]).all()
    result = run_linear_maps(
        LinearMapsConfig(source="smollm2-135m", target="gemma3-270m", store=str(store_dir), tokens=2048, name="x")
    )
    with Store.open_existing(store_dir).reader() as con:
        grid = con.execute("SELECT source_layer, target_layer, rel_error FROM probe_linear_maps").fetchall()
    assert len(grid) == 30 * 18 and result.probe_run.n_tokens == len(rows_a)
    errors = {(i, j): e for i, j, e in grid}
    # The embedding-side layers map onto each other better than onto the far end of the other model.
    assert errors[0, 0] < errors[0, 17]


def test_attribution_through_gemma_freezes_its_norms_exactly(gemma):
    from workbench.circuits.attribute import Targets, build_graph
    from workbench.circuits.deembed import de_embeddings
    from workbench.circuits.replacement import TranscoderSet
    from workbench.dictionaries import DictionaryConfig, make_dictionary

    _, hf_model, tokenizer = gemma
    torch.manual_seed(0)
    coders = {
        layer: make_dictionary(DictionaryConfig(arch="topk", d_in=640, n_latents=256, k=8, transcoder=True)).eval()
        for layer in (3, 10)
    }
    prompt = "The capital of France is"
    graph = build_graph(hf_model, tokenizer, prompt, TranscoderSet(coders), Targets(max_logits=1))
    ids = torch.tensor([[tokenizer.bos_token_id, *tokenizer(prompt, add_special_tokens=False)["input_ids"]]])
    with torch.no_grad():
        real = hf_model(ids).logits[0, -1]
    assert graph.targets[0].activation == pytest.approx((real.max() - real.mean()).item(), rel=1e-4)
    kinds = np.array([node.kind for node in graph.nodes])
    values = np.array([node.activation for node in graph.nodes])
    targets = np.flatnonzero(np.isin(kinds, ("feature", "logit")))
    assert np.abs(graph.adjacency.sum(1) + graph.bias - values)[targets].max() < 1e-3 * max(1, np.abs(values).max())
    assert len(de_embeddings(hf_model, tokenizer, coders[10], 10, 0, n=5).heads) == 11 * 4


def test_ioi_patching_on_gemma_agrees_between_backends(gemma):
    from workbench.circuits.patching import patch_task
    from workbench.circuits.tasks import load_task, tokenize_task

    model_dir, hf_model, tokenizer = gemma
    task = tokenize_task(load_task("ioi", tokenizer, n_pairs=2), tokenizer)  # ~80 s per backend at 2 pairs
    sight = patch_task(make_backend("nnsight", hf_model, tokenizer), task, "layers", progress=False)
    lens = patch_task(make_backend("transformerlens", *load_hf_model(model_dir)), task, "layers", progress=False)
    assert sight.metric_clean > 0  # Gemma prefers the indirect object on these prompts
    assert [s.score for s in sight.scores] == pytest.approx([s.score for s in lens.scores], abs=1e-3)
