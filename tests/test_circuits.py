"""Activation patching on a planted model whose only route between positions is one known head."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from workbench.circuits.patching import PatchingConfig, patch_task, run_patching
from workbench.circuits.tasks import TaskError, jsonl_task, load_task, tokenize_task
from workbench.models import load_hf_model, make_backend

from conftest import run_cli, run_cli_in_process, store_snapshot

PLANTED = (1, 2)  # (layer, head): the one head whose output reaches the residual stream


@pytest.fixture(scope="session")
def planted_dir(tiny_dir, tmp_path_factory):
    """The tiny model with every attention head's output projection zeroed except head 2 of layer 1.

    Then the only way information moves between positions is through that head, and only at
    layer 1: patching must give it a score of exactly 1 and every other head 0.
    """
    model, tokenizer = load_hf_model(tiny_dir)
    d_head = model.config.hidden_size // model.config.num_attention_heads
    with torch.no_grad():
        for index, layer in enumerate(model.model.layers):
            keep = torch.zeros(model.config.hidden_size, dtype=torch.bool)
            if index == PLANTED[0]:
                keep[PLANTED[1] * d_head : (PLANTED[1] + 1) * d_head] = True
            layer.self_attn.o_proj.weight[:, ~keep] = 0
    folder = tmp_path_factory.mktemp("planted")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


NOUNS = [
    ("cat", "dog"),
    ("house", "river"),
    ("king", "table"),
    ("girl", "horse"),
    ("boy", "tree"),
    ("car", "bird"),
    ("man", "fish"),
    ("city", "road"),
]


@pytest.fixture
def pairs_file(tmp_path):
    """Pairs that differ in one early token (position 2 after BOS); the answer is read at the last position."""
    path = tmp_path / "pairs.jsonl"
    with path.open("w") as out:
        for clean, corrupted in NOUNS:
            out.write(
                json.dumps(
                    {
                        "clean": f"The {clean} sat on the mat and then",
                        "corrupted": f"The {corrupted} sat on the mat and then",
                        "answer": " ran",
                        "wrong": " slept",
                    }
                )
                + "\n"
            )
    return path


def _planted(planted_dir, pairs_file, backend="nnsight"):
    model, tokenizer = load_hf_model(planted_dir)
    task = tokenize_task(jsonl_task(pairs_file), tokenizer)
    return make_backend(backend, model, tokenizer), task


def test_patching_finds_exactly_the_planted_head(planted_dir, pairs_file):
    backend, task = _planted(planted_dir, pairs_file)
    result = patch_task(backend, task, "heads", progress=False)
    assert abs(result.metric_clean - result.metric_corrupted) > 1e-3
    scores = {(s.layer, s.head): s.score for s in result.scores}
    assert len(scores) == 2 * 4
    assert scores.pop(PLANTED) == pytest.approx(1.0, abs=1e-4)
    assert max(abs(v) for v in scores.values()) < 1e-4


def test_head_position_and_layer_patching_localise_the_route(planted_dir, pairs_file):
    backend, task = _planted(planted_dir, pairs_file)
    last = task.seq_len - 1
    by_position = {
        (s.layer, s.head, s.position): s.score
        for s in patch_task(backend, task, "head-positions", progress=False).scores
    }
    assert by_position.pop((*PLANTED, last)) == pytest.approx(1.0, abs=1e-4)  # it moves the token to the end
    assert max(abs(v) for v in by_position.values()) < 1e-4
    # The residual stream matters at the corrupted token (position 2) before the head reads it, and nowhere else.
    layers = {(s.layer, s.position): s.score for s in patch_task(backend, task, "layers", progress=False).scores}
    for layer in (0, 1):
        assert layers.pop((layer, 2)) == pytest.approx(1.0, abs=1e-4)
    assert max(abs(v) for v in layers.values()) < 1e-4


def test_both_backends_give_the_same_patching_scores(tiny_dir):
    results = {}
    for name in ("nnsight", "transformerlens"):
        model, tokenizer = load_hf_model(tiny_dir)
        task = tokenize_task(load_task("ioi", tokenizer, n_pairs=4), tokenizer)
        results[name] = patch_task(make_backend(name, model, tokenizer), task, "heads", progress=False)
    a, b = results["nnsight"], results["transformerlens"]
    assert a.metric_clean == pytest.approx(b.metric_clean, abs=1e-4)
    assert [s.score for s in a.scores] == pytest.approx([s.score for s in b.scores], abs=1e-3)


def test_builtin_tasks_are_equal_length_and_single_token(tiny_dir):
    _, tokenizer = load_hf_model(tiny_dir)
    ioi = tokenize_task(load_task("ioi", tokenizer, n_pairs=12), tokenizer)
    assert ioi.clean_ids.shape == ioi.corrupted_ids.shape and ioi.clean_ids.shape[0] == 12
    # ABC corruption: exactly one position differs, the second mention of the subject.
    differing = (ioi.clean_ids != ioi.corrupted_ids).sum(1)
    assert (differing == 1).all()
    assert (
        ioi.clean_ids[:, 4] == ioi.clean_ids[ioi.clean_ids != ioi.corrupted_ids]
    ).all()  # " When A and B": B is at 4
    gt = tokenize_task(load_task("greater-than", tokenizer, n_pairs=12), tokenizer)
    # One token per digit: the start year's tens digit decides which digits count as greater.
    for pair, answers, wrong in zip(gt.task.pairs, gt.answer_ids, gt.wrong_ids):
        tens = int(pair.clean.split("year ")[1][2])
        assert [tokenizer.decode([i]) for i in answers[answers >= 0]] == [str(d) for d in range(tens + 1, 10)]
        assert [tokenizer.decode([i]) for i in wrong[wrong >= 0]] == [str(d) for d in range(tens)]


def test_bad_tasks_are_refused_with_the_fix(tiny_dir, tmp_path):
    _, tokenizer = load_hf_model(tiny_dir)
    path = tmp_path / "bad.jsonl"
    path.write_text(
        json.dumps({"clean": "The cat sat", "corrupted": "The big dog sat", "answer": " ran", "wrong": " x"})
    )
    with pytest.raises(TaskError, match="must be equally long"):
        tokenize_task(jsonl_task(path), tokenizer)
    path.write_text(
        json.dumps(
            {
                "clean": "The cat sat",
                "corrupted": "The dog sat",
                "answer": " antidisestablishmentarianism",
                "wrong": " x",
            }
        )
    )
    with pytest.raises(TaskError, match="not one"):
        tokenize_task(jsonl_task(path), tokenizer)
    path.write_text('{"clean": "no answer here"}\n')
    with pytest.raises(TaskError, match="line 1"):
        jsonl_task(path)
    with pytest.raises(TaskError, match="Unknown task"):
        load_task("ioj", tokenizer)


def test_cli_stores_the_scores_and_bad_input_changes_nothing(store_dir, planted_dir, pairs_file):
    done = run_cli(
        "circuit",
        "patch",
        "--task",
        str(pairs_file),
        "--model",
        str(planted_dir),
        "--store",
        str(store_dir),
        "--levels",
        "heads",
        "--name",
        "planted",
    )
    assert done.returncode == 0, done.stderr
    assert "L1H2 +1.00" in done.stdout
    import duckdb

    con = duckdb.connect(str(store_dir / "catalog.duckdb"), read_only=True)
    rows = con.execute(
        "SELECT layer, head, score FROM circuit_patching WHERE circuit_run = 'planted' ORDER BY score DESC"
    ).fetchall()
    header = con.execute("SELECT method, task, metric, n_pairs FROM circuit_runs").fetchall()
    con.close()
    assert len(rows) == 8 and rows[0][:2] == PLANTED and rows[0][2] == pytest.approx(1.0, abs=1e-4)
    assert header == [("patching", "pairs", "logit_diff", len(NOUNS))]

    before = store_snapshot(store_dir)
    bad = run_cli_in_process(  # the refusal needs no process of its own; the run above had one
        "circuit",
        "patch",
        "--task",
        str(pairs_file),
        "--model",
        str(planted_dir),
        "--store",
        str(store_dir),
        "--levels",
        "heads",
        "--layers",
        "7",
        "--name",
        "planted",
    )
    assert bad.returncode == 2 and "layers 0 to 1" in bad.stderr
    bad = run_cli_in_process(
        "circuit",
        "patch",
        "--task",
        str(pairs_file),
        "--model",
        str(planted_dir),
        "--store",
        str(store_dir),
        "--levels",
        "neurons",
    )
    assert bad.returncode == 2 and "Unknown patching level" in bad.stderr
    assert store_snapshot(store_dir) == before


def test_patching_the_same_run_twice_replaces_it(store_dir, planted_dir, pairs_file):
    config = PatchingConfig(
        task=str(pairs_file), model=str(planted_dir), store=str(store_dir), levels=("heads",), name="again"
    )
    run_patching(config, progress=False)
    run_patching(config, progress=False)
    import duckdb

    con = duckdb.connect(str(store_dir / "catalog.duckdb"), read_only=True)
    assert con.execute("SELECT count(*) FROM circuit_patching").fetchone()[0] == 8
    assert con.execute("SELECT count(*) FROM circuit_runs").fetchone()[0] == 1
    con.close()


# -- circuits from discrete codes ---------------------------------------------------------------


def test_roc_auc_matches_the_pairwise_definition():
    from workbench.circuits.codes import roc_auc

    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, 60).astype(float)  # many ties, as code counts have
    labels = rng.random(60) < 0.3
    pairs = [(1.0 if p > n else 0.5 if p == n else 0.0) for p in scores[labels] for n in scores[~labels]]
    assert roc_auc(scores, labels) == pytest.approx(np.mean(pairs))
    assert np.isnan(roc_auc(scores, np.zeros(60, bool)))


def test_codes_rank_the_planted_head_first_and_score_auc_against_patching(store_dir, planted_dir, pairs_file):
    from workbench.circuits.codes import CodesConfig, run_codes

    run_patching(
        PatchingConfig(
            task=str(pairs_file), model=str(planted_dir), store=str(store_dir), levels=("heads",), name="reference"
        ),
        progress=False,
    )
    run = run_codes(CodesConfig(task=str(pairs_file), store=str(store_dir), name="codes"))
    heads = run.scores.head_scores
    assert run.circuit_run.reference_run == "reference" and heads.shape == (2, 4)
    # Every other head writes exactly nothing, so each keeps one code for every prompt.
    assert heads[PLANTED] >= 1 and np.delete(heads.ravel(), PLANTED[0] * 4 + PLANTED[1]).max() == 0
    assert run.circuit_run.roc_auc_heads == 1.0
    import duckdb

    con = duckdb.connect(str(store_dir / "catalog.duckdb"), read_only=True)
    stored = con.execute(
        "SELECT layer, head, unique_positive_codes, in_reference FROM circuit_code_heads "
        "WHERE circuit_run = 'codes' ORDER BY unique_positive_codes DESC"
    ).fetchall()
    header = con.execute(
        "SELECT method, reference_run, roc_auc_heads, wall_s > 0 FROM circuit_runs WHERE circuit_run = 'codes'"
    ).fetchone()
    con.close()
    assert stored[0] == (*PLANTED, int(heads[PLANTED]), True) and len(stored) == 8
    assert header == ("codes", "reference", 1.0, True)
    # The model in bf16 (head writes and the code dictionary in fp32): the same circuit.
    half = run_codes(CodesConfig(task=str(pairs_file), store=str(store_dir), name="codes-bf16", dtype="bfloat16"))
    assert half.circuit_run.roc_auc_heads == 1.0 and half.circuit_run.dtype == "bfloat16"


def test_codes_without_a_reference_say_how_to_make_one(store_dir, pairs_file):
    from workbench.store import Store

    Store.create_or_open(store_dir)
    before = store_snapshot(store_dir)
    result = run_cli_in_process("circuit", "codes", "--task", str(pairs_file), "--store", str(store_dir))
    assert result.returncode == 2 and "workbench circuit patch --task" in result.stderr
    assert store_snapshot(store_dir) == before


# -- attribution graphs -------------------------------------------------------------------------

GRAPH_PROMPT = "When Mary and John went to the store, John gave a drink to"


@pytest.fixture(scope="module")
def transcoder_store(tmp_path_factory, models_dir):
    """Tiny-model transcoders for both MLP layers, trained briefly on a real harvest, plus one plain SAE."""
    from workbench.harvest import HarvestConfig, run_harvest
    from workbench.train import TrainConfig, run_train

    root = tmp_path_factory.mktemp("graphs") / "store"
    root.mkdir()
    (root / "models").symlink_to(models_dir, target_is_directory=True)
    hooks = [f"blocks.{l}.mlp.hook_{d}" for l in (0, 1) for d in ("in", "out")] + ["blocks.1.hook_out"]
    run_harvest(HarvestConfig(model="tiny", hooks=hooks, store=str(root), tokens=8192, run="h"), progress=False)
    for layer in (0, 1):
        run_train(
            TrainConfig(
                store=str(root),
                hook=f"blocks.{layer}.mlp.hook_in",
                hook_out=f"blocks.{layer}.mlp.hook_out",
                arch="batchtopk",
                k=8,
                latents=128,
                tokens=40_000,
                batch_size=512,
                name=f"tc{layer}",
            ),
            progress=False,
        )
    run_train(
        TrainConfig(
            store=str(root), hook="blocks.1.hook_out", k=8, latents=128, tokens=4096, batch_size=512, name="sae"
        ),
        progress=False,
    )
    return root


def _coders(root):
    from workbench.dictionaries import load_dictionary

    return {layer: load_dictionary(root / "dictionaries" / f"tc{layer}").eval() for layer in (0, 1)}


def test_replacement_model_is_exact_and_edges_sum_to_each_target(transcoder_store, tiny_dir):
    from workbench.circuits.attribute import Targets, build_graph
    from workbench.circuits.replacement import TranscoderSet

    model, tokenizer = load_hf_model(tiny_dir)
    graph = build_graph(model, tokenizer, GRAPH_PROMPT, TranscoderSet(_coders(transcoder_store)), Targets())
    ids = torch.tensor([[tokenizer.bos_token_id, *tokenizer(GRAPH_PROMPT, add_special_tokens=False)["input_ids"]]])
    with torch.no_grad():
        real = model(ids).logits[0, -1]
    probabilities = torch.softmax(real, -1)
    # circuit-tracer's default targets: the most probable tokens until 0.95 of the probability, at most 10.
    order = probabilities.argsort(descending=True)
    expected = min(int((probabilities[order].cumsum(0) < 0.95).sum()) + 1, 10)
    assert [t.vocab_id for t in graph.targets] == order[:expected].tolist()
    for target in graph.targets:  # errors make the replacement exact; targets are demeaned logits
        assert target.activation == pytest.approx((real[target.vocab_id] - real.mean()).item(), abs=1e-4)
        assert target.weight == pytest.approx(probabilities[target.vocab_id].item(), rel=1e-5)
    kinds = graph.kinds
    assert (kinds == "feature").sum() > 20
    values = np.array([n.activation for n in graph.nodes])
    targets = np.flatnonzero(np.isin(kinds, ("feature", "logit")))
    # Feature and embedding edges = the target's value - its error edges - its bias (the value with every source at 0).
    explained = graph.adjacency[:, np.isin(kinds, ("feature", "embedding"))].sum(1)
    errors = graph.adjacency[:, kinds == "error"].sum(1)
    assert np.abs(explained + errors + graph.bias - values)[targets].max() < 1e-4
    # Sources only feed later targets: nothing reaches a feature from its own or a later layer.
    layers = np.array([n.layer for n in graph.nodes])
    assert not (
        graph.adjacency[np.ix_(kinds == "feature", np.ones(len(kinds), bool))]
        * (layers[None, :] >= layers[kinds == "feature"][:, None])
    ).any()
    # Batched backward passes give the same edges as one target at a time.
    one_by_one = build_graph(model, tokenizer, GRAPH_PROMPT, TranscoderSet(_coders(transcoder_store)), Targets(),
                             batch_size=1)  # fmt: skip
    np.testing.assert_allclose(one_by_one.adjacency, graph.adjacency, atol=1e-6)


def test_logit_difference_and_direction_targets_equal_what_the_model_computes(transcoder_store, tiny_dir):
    from workbench.circuits.attribute import Targets, build_graph
    from workbench.circuits.replacement import TranscoderSet

    model, tokenizer = load_hf_model(tiny_dir)
    coders = TranscoderSet(_coders(transcoder_store))
    ids = torch.tensor([[tokenizer.bos_token_id, *tokenizer(GRAPH_PROMPT, add_special_tokens=False)["input_ids"]]])
    with torch.no_grad():
        output = model(ids, output_hidden_states=True)
    a, b = (tokenizer(t, add_special_tokens=False)["input_ids"][0] for t in (" Mary", " John"))
    graph = build_graph(model, tokenizer, GRAPH_PROMPT, coders, Targets(answer=" Mary", wrong=" John"))
    (target,) = graph.targets
    assert target.activation == pytest.approx((output.logits[0, -1, a] - output.logits[0, -1, b]).item(), abs=1e-4)
    assert target.vocab_id == model.config.vocab_size and target.weight == 1.0  # a virtual index, as circuit-tracer's
    direction = np.random.default_rng(0).normal(size=64).astype(np.float32)
    graph = build_graph(model, tokenizer, GRAPH_PROMPT, coders, Targets(direction=direction, direction_layer=0))
    residual = output.hidden_states[1][0, -1]  # after block 0
    assert graph.targets[0].activation == pytest.approx(float(residual @ torch.tensor(direction)), abs=1e-4)
    row = len(graph.nodes) - 1
    kinds = graph.kinds
    # Read after block 0: nothing from layer 1 reaches it.
    assert not graph.adjacency[row, np.array([n.layer for n in graph.nodes]) == 1].any()
    assert abs(graph.adjacency[row].sum() + graph.bias[row] - graph.targets[0].activation) < 1e-4
    assert (kinds == "logit").sum() == 1


def test_planted_head_carries_the_only_cross_position_edges(planted_dir):
    from workbench.circuits.attribute import Targets, build_graph
    from workbench.circuits.replacement import TranscoderSet
    from workbench.dictionaries import DictionaryConfig, make_dictionary

    model, tokenizer = load_hf_model(planted_dir)
    torch.manual_seed(0)
    coders = {
        layer: make_dictionary(DictionaryConfig(arch="topk", d_in=64, n_latents=64, k=4, transcoder=True)).eval()
        for layer in (0, 1)
    }
    graph = build_graph(model, tokenizer, "The cat sat on the mat and then", TranscoderSet(coders), Targets([" ran"]))
    positions = np.array([n.position for n in graph.nodes])
    layers = np.array([n.layer for n in graph.nodes])
    cross = (positions[:, None] != positions[None, :]) & (graph.adjacency != 0)
    # Layer 0's attention writes nothing, so information crosses positions only into layer 1 and the logit.
    assert cross.any() and (layers[np.nonzero(cross)[0]] >= 1).all()
    logit = len(graph.nodes) - 1
    assert abs(graph.adjacency[logit, 2]) > 1e-6  # the noun's embedding reaches the answer through head 1.2


def test_scores_of_planted_models_are_the_known_ones(planted_dir, tmp_path):
    """MLPs that write nothing leave nothing to errors: replacement and completeness are exactly 1. With no
    transcoder at all and MLPs that do write, every path to the logit ends in an error or a token, and the score
    equals the token share that a direct computation of the formula gives."""
    from safetensors.torch import load_file, save_file

    from workbench.circuits.attribute import Targets, build_graph
    from workbench.circuits.graph import influence, normalised, scores
    from workbench.circuits.replacement import TranscoderSet
    from workbench.dictionaries import DictionaryConfig, make_dictionary

    silent = tmp_path / "silent"
    import shutil

    shutil.copytree(planted_dir, silent)
    weights = load_file(silent / "model.safetensors")
    weights = {k: torch.zeros_like(v) if "mlp.down_proj" in k else v for k, v in weights.items()}
    save_file(weights, silent / "model.safetensors")
    model, tokenizer = load_hf_model(silent)
    torch.manual_seed(0)
    coders = {layer: make_dictionary(DictionaryConfig(arch="topk", d_in=64, n_latents=64, k=4, transcoder=True))
              for layer in (0, 1)}  # fmt: skip
    for coder in coders.values():
        coder.W_dec.data.zero_()  # the transcoders reconstruct the silent MLPs exactly: zero
        coder.eval()
    graph = build_graph(model, tokenizer, "The cat sat on the mat", TranscoderSet(coders), Targets([" ran"]))
    assert not graph.adjacency[:, graph.kinds == "error"].any()
    assert scores(graph) == pytest.approx((1.0, 1.0))
    # Real MLPs and no transcoders: every MLP is an error node.
    model, tokenizer = load_hf_model(planted_dir)
    graph = build_graph(model, tokenizer, "The cat sat on the mat", TranscoderSet({}), Targets([" ran"]))
    replacement, completeness = scores(graph)
    kinds = graph.kinds
    node_influence = influence(normalised(graph.adjacency), graph.target_weights)
    tokens, errors = node_influence[kinds == "embedding"].sum(), node_influence[kinds == "error"].sum()
    assert 0.05 < replacement < 0.95 and replacement == pytest.approx(tokens / (tokens + errors))
    # The logit's own input: its share from errors is what completeness loses at the logit.
    A = normalised(graph.adjacency)
    assert completeness < 1 - 0.01 * A[-1, kinds == "error"].sum()


def _hand_graph():
    """embeddings e0, e1; features f2 (layer 0), f3 (layer 1); errors x4; one target t5 (weight 1).

    t5 <- f3 4, x4 -1, f2 1   f3 <- f2 3, e1 1   f2 <- e0 2   x4 is an error (no inputs)."""
    from workbench.circuits.graph import AttributionGraph, Node

    nodes = [
        Node("e0", "embedding", -1, 0),
        Node("e1", "embedding", -1, 1),
        Node("f2", "feature", 0, 1, 2, 1.0),
        Node("f3", "feature", 1, 1, 3, 1.0),
        Node("x4", "error", 0, 1),
        Node("t5", "logit", 2, 1, weight=1.0),
    ]
    A = np.zeros((6, 6))
    A[5, 3], A[5, 4], A[5, 2] = 4.0, -1.0, 1.0
    A[3, 2], A[3, 1] = 3.0, 1.0
    A[2, 0] = 2.0
    return AttributionGraph("p", ["a", "b"], nodes, A, A.astype(np.float32), np.zeros(6), n_layers=2)


def test_pruning_keeps_the_nodes_and_edges_a_hand_computation_keeps():
    from workbench.circuits.graph import influence, normalised, prune, scores

    graph = _hand_graph()
    before = graph.adjacency.copy()
    # Normalised rows: t5 <- f3 4/6, x4 1/6, f2 1/6; f3 <- f2 3/4, e1 1/4; f2 <- e0 1.
    # Influence from t5 (w = 1 at t5): f3 2/3; x4 1/6; f2 1/6 + 2/3 * 3/4 = 2/3; e1 2/3 * 1/4 = 1/6; e0 2/3.
    expected = np.array([2 / 3, 1 / 6, 2 / 3, 2 / 3, 1 / 6, 0])
    np.testing.assert_allclose(influence(normalised(graph.adjacency), graph.target_weights), expected)
    # Node threshold 0.6 of the total 7/3: sorted 2/3, 2/3, 2/3, 1/6, 1/6 -> cumulative 0.286, 0.571, 0.857: the
    # three at 2/3 (e0, f2, f3) are kept; x4 is dropped; e1 and the target are always kept.
    pruned = prune(graph, node_threshold=0.6, edge_threshold=1.0)
    assert pruned.node_mask.tolist() == [True, True, True, True, False, True]
    # Edge threshold 1.0 keeps every edge among kept nodes; 0.5 keeps the strongest edges that make up half of the
    # edge score. Edge scores on the node-pruned graph (x4 gone, t5's row renormalised to f3 4/5, f2 1/5):
    # t5<-f3 0.8, t5<-f2 0.2, f3<-f2 0.8 * 3/4 = 0.6, f3<-e1 0.2, f2<-e0 (0.2 + 0.6) * 1 = 0.8; total 2.6.
    assert pruned.edge_mask.sum() == 5
    # Edge threshold 0.7: sorted 0.8, 0.8, 0.6, 0.2, 0.2 -> cumulative 0.31, 0.62, 0.85: the edges >= 0.6 stay,
    # a chain e0 -> f2 -> f3 -> t5 in which every feature has an input and an output.
    chain = prune(graph, node_threshold=0.6, edge_threshold=0.7)
    kept_edges = {(graph.nodes[t].node_id, graph.nodes[s].node_id) for t, s in zip(*np.nonzero(chain.edge_mask))}
    assert kept_edges == {("t5", "f3"), ("f3", "f2"), ("f2", "e0")}
    assert chain.node_mask.tolist() == [True, True, True, True, False, True]
    # Edge threshold 0.5 keeps t5<-f3 and f2<-e0 only: f3 has no input left and f2 no output, so both go, and
    # with them every edge (circuit-tracer's repeated pruning).
    half = prune(graph, node_threshold=0.6, edge_threshold=0.5)
    assert not half.edge_mask.any() and half.node_mask.tolist() == [True, True, False, False, False, True]
    assert (graph.adjacency == before).all()  # pruning changes nothing in the graph
    # Scores: tokens 2/3 + 1/6 = 5/6 against errors 1/6; completeness weights (influence + w): only t5 has an
    # error input (1/6 of its row): 1 - (1 * 1/6) / (7/3 + 1) = 0.95.
    assert scores(graph) == pytest.approx((5 / 6, 1 - (1 / 6) / (10 / 3)))


def test_predicted_changes_pass_through_later_features_one_for_one():
    from workbench.circuits.interventions import predicted_changes

    graph = _hand_graph()  # per-unit weights equal the edges here: every feature's activation is 1
    change = predicted_changes(graph, {2: -1.0})  # f2 down by 1: f3's input -3, the target's -1 + 4 * -3
    assert change[3] == pytest.approx(-3.0) and change[5] == pytest.approx(-13.0)
    clamped = predicted_changes(graph, {2: -1.0, 3: 0.0})  # f3 held where it was: only the direct edge is left
    assert clamped[5] == pytest.approx(-1.0)


def test_exported_graphs_validate_with_circuit_tracers_own_models_and_the_cli_stores_them(transcoder_store, tmp_path):
    from circuit_tracer.frontend import feature_models, graph_models

    out = tmp_path / "graph.json"
    result = run_cli(
        "circuit", "graph", "--prompt", GRAPH_PROMPT, "--transcoders", "tc0,tc1", "--store", str(transcoder_store),
        "--target", " to", "--name", "g", "--json", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "replacement score" in result.stdout and "faithfulness" in result.stdout, result.stdout
    data = json.loads(out.read_text())
    graph_models.Model(**data)  # circuit-tracer 0.5's frontend model: raises on any field it rejects
    assert data["metadata"]["transcoder_list"] == ["./data/features/tc0", "./data/features/tc1"]
    ids = [node["node_id"] for node in data["nodes"]]
    assert len(ids) == len(set(ids)) and all(l["source"] in ids and l["target"] in ids for l in data["links"])
    for node in data["nodes"]:  # ids and feature values as circuit-tracer's Node factories make them
        kind = node["feature_type"]
        if kind == "cross layer transcoder":
            layer, feature, position = map(int, node["node_id"].split("_"))
            expected = graph_models.Node.feature_node(layer, position, feature)
        elif kind == "embedding":
            _, vocab, position = node["node_id"].split("_")
            expected = graph_models.Node.token_node(int(position), int(vocab))
        elif kind == "logit":
            expected = graph_models.Node.logit_node(node["ctx_idx"], node["feature"], "x", 2)
        else:
            expected = graph_models.Node.error_node(int(node["layer"]), node["ctx_idx"])
        assert (node["node_id"].removesuffix("_error"), node["feature"], node["layer"], node["jsNodeId"]) == (
            expected.node_id,
            expected.feature,
            expected.layer,
            expected.jsNodeId,
        )
    assert sum(node["is_target_logit"] for node in data["nodes"] if node["feature_type"] == "logit") == 1
    import duckdb

    con = duckdb.connect(str(transcoder_store / "catalog.duckdb"), read_only=True)
    row = con.execute(
        "SELECT transcoders, n_kept_nodes, n_kept_edges, path, faithfulness FROM circuit_graphs WHERE graph = 'g'"
    ).fetchone()
    con.close()
    assert row[0] == ["tc0", "tc1"] and row[1] == len(data["nodes"]) and row[2] == len(data["links"])
    assert json.loads((transcoder_store / row[3]).read_text()) == data
    # Trained transcoders on the tiny model: ablating each top feature in the real model moves the target as the graph
    # predicts, up to attention and norms responding (0.82 measured; unrelated predictions would give about 0).
    assert row[4] > 0.7, row[4]

    # Export: the folder circuit-tracer's server reads, its metadata as create_graph_files writes it.
    served = tmp_path / "served"
    result = run_cli("circuit", "export", "g", "--out", str(served), "--store", str(transcoder_store))
    assert result.returncode == 0, result.stderr
    index = json.loads((served / "graph-metadata.json").read_text())
    assert index["graphs"] == [graph_models.Metadata(**data["metadata"]).model_dump()]
    feature_nodes = [n for n in data["nodes"] if n["feature_type"] == "cross layer transcoder"]
    files = sorted((served / "features").rglob("*.json"))
    assert len(files) == len({(n["layer"], n["feature"]) for n in feature_nodes}) > 0
    for node in feature_nodes:
        path = served / "features" / node["dictionary"] / f"{node['feature']}.json"
        feature_models.Model(**json.loads(path.read_text()))
    # tc0 and tc1 are not encoded: their files have logits but no examples, and the report says how to add them.
    assert "workbench encode" in result.stdout


def test_interventions_match_the_graph_where_it_is_linear_and_bad_nodes_are_refused(transcoder_store):
    from workbench.circuits.attribution import GraphConfig, InterveneConfig, run_graph, run_intervene
    from workbench.store import Store
    from workbench.store.results import attribution_graph

    built = run_graph(GraphConfig(GRAPH_PROMPT, ["tc0", "tc1"], str(transcoder_store), target=[" to"], name="iv"))
    data = attribution_graph(Store.open_existing(transcoder_store), "iv")
    features = [n for n in data["nodes"] if n["feature_type"] == "cross layer transcoder"]
    last = [
        n["node_id"]
        for n in features
        if n["layer"] == "1" and n["ctx_idx"] == len(data["metadata"]["prompt_tokens"]) - 1
    ]
    layer0 = [n["node_id"] for n in features if n["layer"] == "0"]
    assert last and layer0
    same = run_intervene(InterveneConfig("iv", layer0[:1], str(transcoder_store), scale=1.0))
    assert same.intervention.actual_change == pytest.approx(0, abs=1e-6)
    assert same.intervention.predicted_change == pytest.approx(0, abs=1e-9)
    # A last-layer feature at the last position reaches the logit only through the final norm. The graph freezes the
    # norm's scale, which drops the first-order term of the scale's response (8% here); nothing else differs.
    small = run_intervene(InterveneConfig("iv", last[:1], str(transcoder_store), scale=0.9)).intervention
    assert abs(small.actual_change) > 1e-4
    assert small.predicted_change == pytest.approx(small.actual_change, rel=0.15)
    # Through a later real MLP the prediction is only first order: same direction, not the same size.
    ablated = run_intervene(InterveneConfig("iv", layer0[:1], str(transcoder_store), scale=0.0, generate=3))
    row = ablated.intervention
    assert abs(row.actual_change) > 1e-3 and np.sign(row.predicted_change) == np.sign(row.actual_change)
    assert ablated.generated_before and ablated.generated_after
    assert len(built.actual) == len(built.predicted) > 2
    before = store_snapshot(transcoder_store)
    result = run_cli_in_process(
        "circuit", "intervene", "--graph", "iv", "--node", "0_99999_3", "--store", str(transcoder_store)
    )
    assert result.returncode == 2 and "not in graph 'iv'" in result.stderr, result.stderr
    assert store_snapshot(transcoder_store) == before


@pytest.mark.parametrize(
    "args, message",
    [
        (["--transcoders", "tc0,nope"], "No dictionary 'nope'"),
        (["--transcoders", "tc0,sae"], "need transcoders from blocks.L.mlp.hook_in"),
        (["--transcoders", "tc0,tc0"], "Two transcoders for layer 0"),
        (["--transcoders", "tc0,tc1", "--max-features", "5"], "over the limit of 5"),
        (["--transcoders", "tc0", "--target", " antidisestablishmentarianism"], "not one"),
        (["--transcoders", "tc0", "--target", " to,of", "--wrong", " the"], "exactly one --target"),
    ],
)
def test_bad_graph_requests_are_refused_and_store_nothing(transcoder_store, args, message):
    before = store_snapshot(transcoder_store)
    # In this process: test_cli_stores_the_scores_and_bad_input_changes_nothing checks a real process's exit status.
    result = run_cli_in_process("circuit", "graph", "--prompt", GRAPH_PROMPT, "--store", str(transcoder_store), *args)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert store_snapshot(transcoder_store) == before


def test_all_transcoders_need_every_layer_and_memory_is_estimated_first(transcoder_store, monkeypatch):
    from workbench.circuits import attribution
    from workbench.store import Store

    store = Store.open_existing(transcoder_store)
    assert attribution.load_transcoders(store, ["all"]).names == {0: "tc0", 1: "tc1"}
    before = store_snapshot(transcoder_store)
    # A store whose transcoders miss a layer: hide tc1 from the listing.
    names = attribution.lookups.dictionary_names
    monkeypatch.setattr(attribution.lookups, "dictionary_names", lambda s, complete: [n for n in names(s, complete)
                                                                                     if n != "tc1"])  # fmt: skip
    result = run_cli_in_process("circuit", "graph", "--prompt", GRAPH_PROMPT, "--store", str(transcoder_store),
                                "--transcoders", "all")  # fmt: skip
    assert result.returncode == 2 and "layers 1 have none" in result.stderr, result.stderr
    monkeypatch.undo()
    monkeypatch.setattr(attribution, "available_memory", lambda: 2**20)
    result = run_cli_in_process("circuit", "graph", "--prompt", GRAPH_PROMPT, "--store", str(transcoder_store),
                                "--transcoders", "all")  # fmt: skip
    assert result.returncode == 2 and "could need" in result.stderr and "GiB" in result.stderr, result.stderr
    assert store_snapshot(transcoder_store) == before


def test_de_embeddings_agree_with_direct_computation_and_see_only_the_planted_head(planted_dir):
    from workbench.circuits.deembed import de_embeddings
    from workbench.dictionaries import DictionaryConfig, make_dictionary

    model, tokenizer = load_hf_model(planted_dir)
    torch.manual_seed(1)
    coder = make_dictionary(DictionaryConfig(arch="topk", d_in=64, n_latents=32, k=4, transcoder=True)).eval()
    result = de_embeddings(model, tokenizer, coder, layer=1, feature=7, n=5)
    # Direct path, computed here from the weights: W_E . (g_post * W_enc[:, f]).
    with torch.no_grad():
        direct = model.model.embed_tokens.weight @ (
            coder.W_enc[:, 7] * model.model.layers[1].post_attention_layernorm.weight
        )
    assert [v for _, v in result.direct] == pytest.approx(direct.topk(5).values.tolist(), rel=1e-5)
    assert set(result.heads) == {(layer, head) for layer in (0, 1) for head in range(4)}
    # Every output projection but head 2 of layer 1 is zero, so no other head can carry a token to the feature.
    for key, pairs in result.heads.items():
        largest = max(abs(v) for _, v in pairs)
        assert (largest > 1e-4) if key == PLANTED else (largest == 0), key
    with pytest.raises(TaskError, match="out of range"):
        de_embeddings(model, tokenizer, coder, layer=1, feature=99)


def test_greedy_paths_follow_the_largest_normalised_edges():
    from workbench.circuits.graph import AttributionGraph, Node, greedy_paths

    # embedding 0 -> feature 2 -> logit 5, embedding 1 -> feature 3 -> logit, and error 4 -> logit.
    nodes = [
        Node("e0", "embedding", -1, 0),
        Node("e1", "embedding", -1, 1),
        Node("f2", "feature", 0, 1, 2),
        Node("f3", "feature", 0, 1, 3),
        Node("err", "error", 0, 1),
        Node("logit", "logit", 1, 1, weight=1.0),
    ]
    adjacency = np.zeros((6, 6))
    adjacency[2, 0], adjacency[2, 1] = 3.0, 1.0  # f2 <- e0 (0.75), e1 (0.25)
    adjacency[3, 1] = -2.0  # f3 <- e1 (1.0)
    adjacency[5, 2], adjacency[5, 3], adjacency[5, 4] = 4.0, 2.0, -2.0  # logit <- f2 (0.5), f3 (0.25), err (0.25)
    graph = AttributionGraph("p", ["a", "b"], nodes, adjacency, np.zeros((6, 6)), np.zeros(6))
    paths = greedy_paths(graph, n_paths=3)
    assert [path for _, path in paths] == [[0, 2, 5], [4, 5], [1, 3, 5]]
    assert [strength for strength, _ in paths] == pytest.approx([0.375, 0.25, 0.25])


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU (skipped on this machine: torch.cuda.is_available() is False)"
))])  # fmt: skip
def test_patching_in_bfloat16_finds_the_planted_head_and_records_the_precision(
    store_dir, planted_dir, pairs_file, device
):
    result = run_patching(
        PatchingConfig(
            task=str(pairs_file), model=str(planted_dir), store=str(store_dir), levels=("heads",), name="bf16",
            device=device, dtype="bfloat16",
        ),
        progress=False,
    )  # fmt: skip
    scores = {(s.layer, s.head): s.score for s in result.levels["heads"].scores}
    assert scores.pop(PLANTED) == pytest.approx(1.0, abs=0.05)  # fp32 gives 1 +- 1e-4; bf16 keeps 8 bits
    assert max(abs(v) for v in scores.values()) < 0.05
    assert (result.circuit_run.device.split(":")[0], result.circuit_run.dtype) == (device, "bfloat16")
