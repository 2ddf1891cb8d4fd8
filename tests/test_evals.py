"""Evaluations beyond the core metrics: steering and ablation, absorption, sparse probing, autointerp, seed bands,
the scores table and the Neuronpedia export. Real stores, real forward passes of the tiny model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from workbench.errors import DictionaryError, EvaluationError
from workbench.evals.common import LoadedDictionary
from workbench.evals.steering import AblateConfig, SteerConfig, generate, run_ablate, run_steer, steering
from workbench.features import DictionaryView, Unembedding
from workbench.store import Store

from conftest import store_snapshot


@pytest.fixture
def store_copy(app_store, tmp_path):
    """The app store, copied: these tests write explanations and kill servers midway."""
    import shutil

    copy = tmp_path / "store"
    shutil.copytree(app_store, copy, symlinks=True)
    return copy


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


# -- absorption ----------------------------------------------------------------------------------------------


def _planted_absorption(n_per_letter: int = 80, seed: int = 0):
    """Words whose activation is 3 * e_letter + a unit word vector r_w (in the dimensions after the 26 letters), and a
    dictionary with one feature per letter, except that a known share of each letter's words (letter c: c / 50) are
    absorbed: their letter feature stays silent and a word-specific feature with decoder (3 e_letter + r_w) / sqrt(10)
    fires instead. Every absorbed word is then fully absorbed (fraction 1), every other word not at all."""
    from workbench.evals.absorption import LETTERS

    g = torch.Generator().manual_seed(seed)
    d, n_letters = 64, len(LETTERS)
    labels = torch.arange(n_letters).repeat_interleave(n_per_letter)
    word_vectors = torch.randn(len(labels), d - n_letters, generator=g)
    word_vectors /= word_vectors.norm(dim=1, keepdim=True)
    x = torch.cat([3 * torch.nn.functional.one_hot(labels, n_letters).float(), word_vectors], dim=1)
    absorbed = torch.zeros(len(labels), dtype=torch.bool)
    for c in range(n_letters):
        words = (labels == c).nonzero().squeeze(1)
        chosen = words[torch.randperm(len(words), generator=g)[: round(len(words) * c / 50)]]
        absorbed[chosen] = True
    absorber_words = absorbed.nonzero().squeeze(1)
    decoder = torch.cat([torch.eye(n_letters, d), x[absorber_words] / 10**0.5])

    def encode(batch: torch.Tensor) -> torch.Tensor:
        letters = batch[:, :n_letters].clamp_min(0)
        match = batch[:, n_letters:] @ word_vectors[absorber_words].T > 0.9  # this row is that absorbed word
        hit = match.any(1)
        letters[hit] = 0
        return torch.cat([letters, match.float() * 10**0.5], dim=1)

    order = torch.randperm(len(labels), generator=g)
    n_train = int(0.8 * len(order))
    train, test = order[:n_train], order[n_train:]
    return x, labels, absorbed, train, test, encode, decoder


def test_absorption_of_a_planted_dictionary_is_the_planted_rate():
    from workbench.evals.absorption import LETTERS, measure_absorption

    x, labels, absorbed, train, test, encode, decoder = _planted_absorption()
    scores = measure_absorption(x[train], labels[train], x[test], labels[test], encode, decoder, min_letters=26)
    assert scores.n_letters == 26
    expected = []
    for c, letter_scores in enumerate(scores.letters):
        in_test = labels[test] == c
        planted = absorbed[test][in_test].float().mean().item()
        expected.append(planted)
        assert letter_scores.probe_f1 == 1.0
        assert letter_scores.split_features == [c], LETTERS[c]
        assert letter_scores.absorption_rate == pytest.approx(planted, abs=1e-6)
        assert letter_scores.full_absorption == pytest.approx(planted, abs=1e-6)
    assert scores.absorption_rate == pytest.approx(sum(expected) / 26) and scores.absorption_rate > 0.2
    assert scores.full_absorption == pytest.approx(scores.absorption_rate)


def test_absorption_refuses_a_model_without_readable_letters(app_store):
    """The tiny model's random weights carry no spelling: no letter probe reaches F1 0.6, which is said, and the
    store keeps no absorption rows."""
    from workbench.evals.absorption import AbsorptionConfig, run_absorption
    from workbench.store.records import ScoreRecord, read_all

    with pytest.raises(EvaluationError, match="letters have a first-letter probe with F1 above 0.6"):
        run_absorption(
            AbsorptionConfig(store=str(app_store), dictionary="d", words=600, icl_examples=2, device="cpu"),
            progress=False,
        )
    with pytest.raises(EvaluationError, match="is a transcoder"):
        run_absorption(AbsorptionConfig(store=str(app_store), dictionary="tc1", device="cpu"))
    with Store.open_existing(app_store).reader() as con:
        assert read_all(con, ScoreRecord, "benchmark = 'absorption'") == []


# -- sparse probing ------------------------------------------------------------------------------------------


def test_sparse_probes_find_the_planted_feature():
    """Feature 7 carries the label (plus noise); the others are noise. The top-1 probe must pick feature 7 and match
    the dense probe, which sees the label through a random rotation of the same signal."""
    from workbench.evals.sparse_probing import probe_task

    rng = np.random.default_rng(0)
    y = rng.random(800) < 0.5
    f = rng.exponential(1.0, (800, 50))
    f[:, 7] = np.where(y, 3.0, 0.0) + rng.normal(0, 0.5, 800)
    x = f @ np.linalg.qr(rng.normal(size=(50, 50)))[0]
    dense, top_k, ranked = probe_task(x[:600], f[:600], y[:600], x[600:], f[600:], y[600:], [1, 2, 5])
    assert ranked[0] == 7
    assert top_k[1] > 0.95 and dense > 0.95
    assert abs(top_k[1] - dense) < 0.03


def test_sparse_probing_on_shipped_text(store_copy, monkeypatch):
    from workbench.evals.probing_tasks import chunk_pool
    from workbench.evals.sparse_probing import ProbingConfig, run_sparse_probing
    from workbench.store.records import ScoreRecord, read_all

    config = ProbingConfig(
        store=str(store_copy),
        dictionary="d",
        tasks=["code_vs_prose", "digit_tokens", "topic:formatstrings"],
        examples=200,
        chunk_tokens=32,
        device="cpu",
    )
    result = run_sparse_probing(config, progress=False)
    by_task = {t.task: t for t in result.tasks}
    assert by_task["code_vs_prose"].n_test == 40 and by_task["code_vs_prose"].n_train == 160
    with Store.open_existing(store_copy).reader() as con:
        stored = {
            (r.task, r.metric): r.value for r in read_all(con, ScoreRecord, dictionary="d", benchmark="sparse_probing")
        }
    assert stored["", "top_5_accuracy"] == pytest.approx(np.mean([t.top_k[5] for t in result.tasks]))
    assert stored["digit_tokens", "dense_accuracy"] == by_task["digit_tokens"].dense
    # The pool is the documentation and the standard library, cut the same way each time.
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(Store.open_existing(store_copy).root / "models" / "tiny")
    pool = chunk_pool(tokenizer, 1, 32, 100, 0)
    assert {c.source for c in pool} == {"code", "prose"} and all(len(c.ids) == 33 for c in pool)

    before = store_snapshot(store_copy)
    with pytest.raises(EvaluationError, match=r"Too few positive examples for digit_tokens \(100\)"):
        run_sparse_probing(
            ProbingConfig(
                store=str(store_copy), dictionary="d", tasks=["digit_tokens"], examples=200, min_positives=101
            )
        )
    with pytest.raises(EvaluationError, match="Unknown probing task 'nope'. Built in: code_vs_prose"):
        run_sparse_probing(ProbingConfig(store=str(store_copy), dictionary="d", tasks=["nope"]))
    # SAEBench's datasets come from the hub: offline (or without `datasets`) the error says what to do instead.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(EvaluationError, match=r"(datasets.*workbench\[hub\])|(needs a network.*code_vs_prose)"):
        run_sparse_probing(ProbingConfig(store=str(store_copy), dictionary="d", tasks=["ag_news"]))
    assert store_snapshot(store_copy) == before


# -- autointerp ----------------------------------------------------------------------------------------------


def test_marks_and_scores_as_delphi_defines_them():
    from workbench.evals.autointerp import Score, Window, balanced_accuracy, marked_text, marks, parse_explanation

    window = Window([" the", " cat", " sat", " on", " mats"], [0.0, 0.9, 1.0, 0.2, 0.31])
    assert marks(window) == [False, True, True, False, True]  # above 0.3 x the window's own maximum
    assert marked_text(window.tokens, marks(window)) == " the<< cat sat>> on<< mats>>"
    assert parse_explanation("Sure!\n[EXPLANATION]: animals sitting\nmore") == "animals sitting"
    assert parse_explanation("  words about cats  \n\n") == "words about cats"
    # Balanced accuracy: (TP/P + TN/N) / 2, so always answering "yes" scores 0.5 whatever the class balance.
    assert balanced_accuracy([0.9, 0.9, 0.9], [True, False, False]) == 0.5
    assert balanced_accuracy([0.9, 0.2, 0.6, 0.1], [True, True, False, False]) == 0.5
    assert balanced_accuracy([0.9, 0.7, 0.4, 0.1], [True, True, False, False]) == 1.0
    # A scorer that says "1" to everything but ranks the examples right: chance by accuracy, perfect by AUC.
    biased = Score.of([0.95, 0.9, 0.8, 0.7], [True, True, False, False])
    assert biased.balanced_accuracy == 0.5 and biased.auc == 1.0


def _serve(models_dir, port=0):
    import threading

    from workbench.evals.llm import LocalLM
    from workbench.evals.llm_server import serve

    server = serve(LocalLM("tiny", models_dir, device="cpu"), port)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_explain_through_a_local_model_and_an_endpoint_serving_it(store_copy, models_dir):
    """The same greedy model, local and behind a real HTTP server on localhost, writes the same explanations and
    the same scores. A server that goes away stops the run with a clear message, keeps the features done, and a
    re-run asks the server again only for the rest."""
    from workbench.evals.autointerp import ExplainConfig, run_explain
    from workbench.store.records import ExplanationRecord, ScoreRecord, read_all

    features = _features_with_activations(store_copy, 3)
    common = dict(store=str(store_copy), dictionary="d", test_examples=2, explain_examples=4, device="cpu")
    local = run_explain(ExplainConfig(**common, features=features[:2], explainer="tiny"), progress=False)
    assert [r.feature for r in local.explained] == features[:2]

    server = _serve(models_dir)
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    served = run_explain(ExplainConfig(**common, features=features[:2], endpoint=url, model="tiny"), progress=False)
    for a, b in zip(local.explained, served.explained):
        assert a.explanation == b.explanation
        assert (a.detection, a.fuzzing, a.detection_random) == (b.detection, b.fuzzing, b.detection_random)
    server.shutdown()
    server.server_close()

    with pytest.raises(EvaluationError, match="Could not reach the endpoint .* run the same command again"):
        run_explain(ExplainConfig(**common, features=features, endpoint=url, model="tiny"), progress=False)
    again = _serve(models_dir, port=int(url.split(":")[-1].split("/")[0]))
    resumed = run_explain(ExplainConfig(**common, features=features, endpoint=url, model="tiny"), progress=False)
    assert resumed.already == 2 and [r.feature for r in resumed.explained] == features[2:]
    # One explanation and 4 scorings of 4 windows each for the one new feature: nothing redone.
    assert again.requests == 1 + 4 * 4
    again.shutdown()
    with Store.open_existing(store_copy).reader() as con:
        rows = read_all(con, ExplanationRecord, dictionary="d", explainer=f"tiny @ {url}")
        summary = {r.metric: r.value for r in read_all(con, ScoreRecord, benchmark="autointerp", task="")}
    assert sorted(r.feature for r in rows) == sorted(features)
    assert summary["detection"] == pytest.approx(np.mean([r.detection for r in rows]))


def _features_with_activations(store, n):
    from workbench.store.sql import run_query

    rows = run_query(
        Store.open_existing(store),
        "SELECT feature FROM feature_stats WHERE dictionary = 'd' AND n_active >= 40 AND feature NOT IN "
        f"(SELECT feature FROM feature_explanations) ORDER BY feature LIMIT {n}",
    )
    return [int(v.as_py()) for v in rows.table.column(0)]


def test_explain_refuses_what_it_cannot_do(store_copy):
    import socket

    from workbench.evals.autointerp import ExplainConfig, run_explain

    before = store_snapshot(store_copy)
    with pytest.raises(DictionaryError, match=r"has not been encoded.*workbench encode --store .* --dict not-encoded"):
        run_explain(ExplainConfig(store=str(store_copy), dictionary="not-encoded"))
    with pytest.raises(DictionaryError, match="out of range"):
        run_explain(ExplainConfig(store=str(store_copy), dictionary="d", features=[128]))
    with pytest.raises(EvaluationError, match="--endpoint needs --model"):
        ExplainConfig(store=str(store_copy), dictionary="d", endpoint="http://127.0.0.1:1/v1")
    silent = socket.socket()  # accepts connections, never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    url = f"http://127.0.0.1:{silent.getsockname()[1]}/v1"
    features = _features_with_activations(store_copy, 1)
    with pytest.raises(EvaluationError, match="gave no answer within 1 s"):
        run_explain(
            ExplainConfig(store=str(store_copy), dictionary="d", features=features, endpoint=url, model="m", timeout=1),
            progress=False,
        )
    silent.close()
    assert store_snapshot(store_copy) == before


# -- Neuronpedia export --------------------------------------------------------------------------------------


def test_neuronpedia_export_is_accepted_by_neuronpedias_own_dataclasses(store_copy, tmp_path):
    """Each feature validates against neuronpedia's Feature/Logit/Activation/Explanation (pydantic, unknown keys
    forbidden) and the limits of Neuronpedia's upload route; the numbers are the store's."""
    import json

    from neuronpedia import np_activation, np_explanation, np_feature
    from pydantic import ConfigDict, TypeAdapter

    from workbench.evals.autointerp import ExplainConfig, run_explain
    from workbench.evals.neuronpedia import NeuronpediaExportConfig, run_export_neuronpedia
    from workbench.features import top_contexts
    from workbench.store import lookups

    features = _features_with_activations(store_copy, 6)
    run_explain(ExplainConfig(store=str(store_copy), dictionary="d", features=features[:1], explainer="tiny",
                              test_examples=2, explain_examples=2, device="cpu"), progress=False)  # fmt: skip
    out = tmp_path / "np"
    result = run_export_neuronpedia(
        NeuronpediaExportConfig(store=str(store_copy), dictionary="d", out=str(out), features=features), progress=False
    )
    assert result.files == ["batch-0.json"] and result.source == "1-d" and result.model_id == "tiny"

    strict = ConfigDict(extra="forbid")

    class Logit(np_feature.Logit):
        __pydantic_config__ = strict

    class Activation(np_activation.Activation):
        __pydantic_config__ = strict

    class Explanation(np_explanation.Explanation):
        __pydantic_config__ = strict

    class Feature(np_feature.Feature):
        __pydantic_config__ = strict
        __annotations__ = {**np_feature.Feature.__annotations__, "top_logits": list[Logit] | None,
                           "bottom_logits": list[Logit] | None, "explanations": list[Explanation] | None,
                           "activations": list[Activation] | None}  # fmt: skip

    batch = json.loads((out / "batch-0.json").read_text())
    assert set(batch) == {"modelId", "source", "features"} and 1 <= len(batch["features"]) <= 128
    parsed = [TypeAdapter(Feature).validate_python(f) for f in batch["features"]]
    assert [f.index for f in parsed] == features  # unique, in order
    store = Store.open_existing(store_copy)
    record = lookups.completed_dictionary(store, "d")
    for feature in parsed:
        assert 1 <= len(feature.activations) and len(feature.top_logits) == len(feature.bottom_logits) == 10
        assert all(1 <= len(a.tokens) == len(a.values) <= 1024 for a in feature.activations)
        assert all(a.quantileFraction is None or 0 <= a.quantileFraction <= 1 for a in feature.activations)
        assert feature.top_logits[0].value >= feature.top_logits[-1].value > feature.bottom_logits[0].value
    top = top_contexts(store, record, features[0], n=10)
    assert parsed[0].activations[0].values == top[0].values and max(parsed[0].activations[0].values) == top[0].value
    assert len(parsed[0].explanations) == 1 and parsed[1].explanations == []
    assert all(len(e.text) <= 512 for e in parsed[0].explanations)

    with pytest.raises(DictionaryError, match="not been encoded"):
        run_export_neuronpedia(
            NeuronpediaExportConfig(store=str(store_copy), dictionary="not-encoded", out=str(tmp_path / "x"))
        )
    with pytest.raises(EvaluationError, match="exists and is not an empty folder"):
        run_export_neuronpedia(NeuronpediaExportConfig(store=str(store_copy), dictionary="d", out=str(out)))


# -- on SmolLM2-135M -----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_evaluations_on_smollm2(store_dir, models_dir):
    """A layer-6 TopK of SmolLM2: the model spells (most letters' probes reach F1 0.6), code and digits are
    linearly readable and a digit feature exists, and the SmolLM2-Instruct explainer gives the same explanations
    locally and behind the localhost endpoint."""
    import threading

    from workbench.encode import EncodeConfig, run_encode
    from workbench.evals.absorption import AbsorptionConfig, run_absorption
    from workbench.evals.autointerp import ExplainConfig, run_explain
    from workbench.evals.llm import LocalLM
    from workbench.evals.llm_server import serve
    from workbench.evals.sparse_probing import ProbingConfig, run_sparse_probing
    from workbench.harvest import HarvestConfig, run_harvest
    from workbench.train import TrainConfig, run_train

    store = str(store_dir)
    run_harvest(HarvestConfig(model="smollm2-135m", hooks=["blocks.6.hook_out"], store=store, tokens=16384, run="s"),
                progress=False)  # fmt: skip
    run_train(TrainConfig(store=store, hook=["blocks.6.hook_out"], k=[32], latents=[2304], tokens=200_000,
                          batch_size=2048, name="sae"), progress=False)  # fmt: skip
    run_encode(EncodeConfig(store=store, dictionary="sae"), progress=False)

    absorption = run_absorption(AbsorptionConfig(store=store, dictionary="sae", words=2000, device="cpu")).scores
    print(f"absorption {absorption.absorption_rate:.3f}, full {absorption.full_absorption:.3f}, "
          f"{absorption.n_letters} letters")  # fmt: skip
    assert absorption.n_letters >= 18

    probing = run_sparse_probing(
        ProbingConfig(store=store, dictionary="sae", tasks=["code_vs_prose", "digit_tokens"], device="cpu"),
        progress=False,
    )
    tasks = {t.task: t for t in probing.tasks}
    assert tasks["code_vs_prose"].dense > 0.9 and tasks["digit_tokens"].dense > 0.95
    assert tasks["digit_tokens"].top_k[20] > 0.9

    common = dict(store=store, dictionary="sae", n_features=2, test_examples=4, explain_examples=6, device="cpu")
    local = run_explain(ExplainConfig(**common), progress=False)
    server = serve(LocalLM("smollm2-135m", models_dir, device="cpu"), 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    served = run_explain(ExplainConfig(**common, endpoint=url, model="smollm2-135m"), progress=False)
    server.shutdown()
    assert [r.explanation for r in local.explained] == [r.explanation for r in served.explained]
    assert [r.detection for r in local.explained] == [r.detection for r in served.explained]


def test_explanations_label_the_feature_nodes_of_attribution_graphs(store_copy, tmp_path):
    """An explanation stored for a transcoder feature becomes that node's clerp: in a graph built afterwards, and
    in an older graph when it is exported."""
    import json

    from workbench.circuits.attribution import ExportConfig, GraphConfig, run_export, run_graph
    from workbench.store.records import ExplanationRecord, insert
    from workbench.store.results import attribution_graph

    store = Store.open_existing(store_copy)
    old = attribution_graph(store, "mary")
    feature_node = next(n for n in old["nodes"] if n["feature_type"] == "cross layer transcoder")
    assert feature_node["clerp"] == ""
    with store.transaction() as con:
        insert(con, ExplanationRecord("tc1", feature_node["feature_index"], "drinks given to people", "hand", "wb-1",
                                      detection=0.9))  # fmt: skip
        insert(con, ExplanationRecord("tc1", feature_node["feature_index"], "a worse label", "hand-2", "wb-1",
                                      detection=0.6))  # fmt: skip
    exported = run_export(ExportConfig(graph="mary", out=str(tmp_path / "out"), store=str(store_copy)))
    nodes = json.loads(exported.graph_path.read_text())["nodes"]
    labelled = [n for n in nodes if n.get("feature_index") == feature_node["feature_index"]]
    assert labelled and all(n["clerp"] == "drinks given to people" for n in labelled)  # the best detection wins
    run_graph(GraphConfig(prompt=old["metadata"]["prompt"], transcoders=["tc1"], store=str(store_copy), name="again"))
    rebuilt = attribution_graph(store, "again")["nodes"]
    same = [n for n in rebuilt if n.get("feature_index") == feature_node["feature_index"]]
    assert same and all(n["clerp"] == "drinks given to people" for n in same)
    others = [n for n in rebuilt if n["feature_type"] == "cross layer transcoder" and n not in same]
    assert all(n["clerp"] == "" for n in others)


def test_every_evaluation_command_reports_from_the_command_line(store_copy, tmp_path):
    from conftest import run_cli_in_process

    store = str(store_copy)
    feature = _features_with_activations(store_copy, 1)[0]
    scores = run_cli_in_process("scores", "--store", store)
    assert scores.returncode == 0 and "d (2 seeds)" in scores.stdout and "top-5" in scores.stdout
    steer = run_cli_in_process("steer", "--store", store, "--dict", "d", "--feature", str(feature), "--strength",
                               "300", "--prompt", "The cat", "--max-new-tokens", "4", "--device", "cpu")  # fmt: skip
    assert steer.returncode == 0 and "unsteered: " in steer.stdout and f"add feature {feature} at 300" in steer.stdout
    ablate = run_cli_in_process("ablate", "--store", store, "--dict", "d", "--feature", str(feature), "--tokens",
                                "512", "--device", "cpu")  # fmt: skip
    assert ablate.returncode == 0 and f"feature {feature} of d zeroed on" in ablate.stdout
    probing = run_cli_in_process("sparse-probing", "--store", store, "--dict", "d", "--tasks", "digit_tokens",
                                 "--examples", "200", "--k", "1,5", "--device", "cpu")  # fmt: skip
    assert probing.returncode == 0 and "digit_tokens" in probing.stdout and "top-5" in probing.stdout
    explain = run_cli_in_process("explain", "--store", store, "--dict", "d", "--features", str(feature),
                                 "--explainer", "tiny", "--test-examples", "2", "--explain-examples", "2",
                                 "--device", "cpu")  # fmt: skip
    assert (
        explain.returncode == 0 and f"  {feature:>6}  detection" in explain.stdout and "0.5 is chance" in explain.stdout
    )
    again = run_cli_in_process("explain", "--store", store, "--dict", "d", "--features", str(feature),
                               "--explainer", "tiny", "--device", "cpu")  # fmt: skip
    assert again.returncode == 0 and "1 features already had an explanation from tiny; kept." in again.stdout
    refused = run_cli_in_process("absorption", "--store", store, "--dict", "tc1")
    assert refused.returncode == 2 and "is a transcoder" in refused.stderr
    exported = run_cli_in_process("export", "neuronpedia", "--store", store, "--dict", "d", "--features",
                                  str(feature), "--out", str(tmp_path / "np"))  # fmt: skip
    assert exported.returncode == 0 and (tmp_path / "np" / "batch-0.json").exists()
    evaluated = run_cli_in_process("eval", "--store", store, "--dict", "d", "--ce-tokens", "256", "--device", "cpu")
    assert evaluated.returncode == 0 and "CE-loss score" in evaluated.stdout and "d (2 seeds)" in evaluated.stdout
