"""The Streamlit app on a real store: tiny model, real harvest, trained and encoded dictionary, depth probes.

Every page runs under streamlit.testing.v1.AppTest, and the numbers it shows are checked
against the store or against an independent computation. test_feature_page_in_a_real_browser drives the
served app in a real Chromium.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
from pathlib import Path

import duckdb
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from streamlit.testing.v1 import AppTest

from workbench.harvest import HarvestConfig, run_harvest
from workbench.store import Store

from conftest import (
    APP_STORE_CODEBOOK_SITES,
    APP_STORE_HOOK,
    REPO,
    downgrade_to_v1,
    free_port,
    run_cli,
    start_cli,
    store_snapshot,
)

MAIN = REPO / "app" / "main.py"
HOOK = APP_STORE_HOOK
CODEBOOK_SITES = APP_STORE_CODEBOOK_SITES


@pytest.fixture(scope="module")
def app_store_snapshot(app_store) -> dict:
    """What app_store holds, taken once (a third of a second each time): tests may read the store, and one that
    changes it must put it back, so this stays the state every test starts from."""
    return store_snapshot(app_store)


@pytest.fixture
def app(app_store, monkeypatch):
    monkeypatch.setenv("WORKBENCH_STORE", str(app_store))
    return AppTest.from_file(str(MAIN), default_timeout=120)


def sql(root: Path, query: str, params=None):
    con = duckdb.connect(str(root / "catalog.duckdb"), read_only=True)
    try:
        return con.execute(query, params or []).fetchall()
    finally:
        con.close()


def open_page(at: AppTest, page: str, **params) -> AppTest:
    at.query_params.clear()
    at.query_params.update({k: str(v) for k, v in params.items()})
    at.switch_page(page).run()
    assert not at.exception, at.exception
    return at


def metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def _decode_arrays(value):
    """Plotly sends numpy arrays as {"dtype", "bdata"[, "shape"]}: turn them back into lists."""
    if isinstance(value, dict) and "bdata" in value and "dtype" in value:
        array = np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"])
        if "shape" in value:
            array = array.reshape([int(n) for n in str(value["shape"]).split(",")])
        return array.tolist()
    if isinstance(value, dict):
        return {k: _decode_arrays(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode_arrays(v) for v in value]
    return value


def plotly(at: AppTest, key: str) -> dict:
    """The figure of the chart with this key, as the browser receives it."""
    for chart in at.get("plotly_chart"):
        if chart.proto.id and key in chart.proto.id:
            return _decode_arrays(json.loads(chart.proto.spec))
    raise AssertionError(f"no chart '{key}'")


# -- overview ------------------------------------------------------------------------------------------


def test_overview_shows_runs_and_dictionary_metrics_from_the_store(app, app_store):
    app.run()
    assert not app.exception
    assert metric(app, "Tokens") == "8,192" and metric(app, "Dictionaries") == "4" and metric(app, "Probe runs") == "1"
    frames = {tuple(df.value.columns)[:3]: df.value for df in app.dataframe}
    runs = next(v for k, v in frames.items() if k[:2] == ("run", "model"))
    assert runs.loc[0, "run"] == "h" and runs.loc[0, "n_tokens"] == 8192
    dictionaries = next(v for k, v in frames.items() if k == ("page", "name", "arch"))
    d = dictionaries.set_index("name").loc["d"]
    fvu, l0, score = sql(app_store, "SELECT fvu, l0, ce_loss_score FROM dictionary_evals WHERE dictionary = 'd'")[0]
    assert (
        d["fvu"] == pytest.approx(fvu) and d["l0"] == pytest.approx(l0) and d["ce_loss_score"] == pytest.approx(score)
    )
    assert d["page"] == "features?dict=d"
    # The unencoded dictionary has no feature page yet, and the page says how to make one.
    assert not isinstance(dictionaries.set_index("name").loc["not-encoded", "page"], str)
    assert any("workbench encode --store" in c.value and "not-encoded" in c.value for c in app.caption)
    codebooks = next(v for k, v in frames.items() if k[:2] == ("page", "name") and "n_codes" in v.columns)
    row = codebooks.set_index("name").loc["cb"]
    assert row["page"] == "codes?codebook=cb" and row["encoded_runs"] == 1
    assert row["lm_loss_increase"] == pytest.approx(sql(app_store, "SELECT lm_loss_increase FROM codebooks")[0][0])


def test_overview_shows_every_dictionarys_evaluations_with_seed_bands(app, app_store):
    app.run()
    assert not app.exception
    table = next(df.value for df in app.dataframe if tuple(df.value.columns)[:3] == ("dictionary", "arch", "seeds"))
    d = table.set_index("dictionary").loc["d"]
    fvus = [row[0] for row in sql(app_store, "SELECT fvu FROM dictionary_evals WHERE dictionary IN ('d', 'd-seed1')")]
    assert d["seeds"] == 2 and "d-seed1" not in table["dictionary"].tolist()  # the sibling is folded into d's band
    assert d["FVU"] == f"{np.mean(fvus):.4g} ± {np.std(fvus, ddof=1):.2g}"
    top5 = sql(app_store, "SELECT value FROM dictionary_scores WHERE task = '' AND metric = 'top_5_accuracy'")
    assert d["top-5"] == f"{np.mean([v for (v,) in top5]):.4g} ± {np.std([v for (v,) in top5], ddof=1):.2g}"
    detection = sql(app_store, "SELECT avg(detection) FROM feature_explanations WHERE dictionary = 'd'")[0][0]
    assert d["detection"] == f"{detection:.4g}"
    bands = plotly(app, "score-bands")
    fvu_trace = next(t for t in bands["data"] if t["name"] == "FVU")
    assert fvu_trace["y"][list(fvu_trace["x"]).index("d")] == pytest.approx(np.mean(fvus))


# -- feature explorer --------------------------------------------------------------------------------


def test_feature_page_numbers_agree_with_the_store_and_the_weights(app, app_store, tiny_dir):
    feature, n_active, density = sql(
        app_store,
        "SELECT feature, n_active, density FROM feature_stats WHERE dictionary = 'd' ORDER BY density DESC LIMIT 1",
    )[0]
    values = np.array(
        [
            r[0]
            for r in sql(app_store, "SELECT value FROM feature_acts WHERE dictionary = 'd' AND feature = ?", [feature])
        ]
    )
    open_page(app, "views/features.py", dict="d", feature=feature)
    assert app.query_params["feature"] == [str(feature)] or app.query_params["feature"] == str(feature)
    assert metric(app, "Fires on") == f"{n_active:,} tokens" and metric(app, "Density") == f"{density:.3%}"
    assert metric(app, "Max activation") == f"{values.max():.3f}"
    assert metric(app, "Density rank") == "1 / 128"

    # The first top context is the feature's strongest activation, centred on its token.
    top_id, top_value = sql(
        app_store,
        "SELECT token_id, value FROM feature_acts WHERE dictionary = 'd' AND "
        "feature = ? ORDER BY value DESC, token_id LIMIT 1",
        [feature],
    )[0]
    first = next(h.proto.body for h in app.get("html") if "wb-context" in h.proto.body)
    assert f"{top_value:.3f} · token {top_id}" in first
    token_text = sql(app_store, "SELECT token FROM tokens WHERE run = 'h' AND token_id = ?", [top_id])[0][0]
    centre = first.split('wb-centre"')[1].split(">", 1)[1].split("</span>")[0]
    import html as html_lib

    assert html_lib.unescape(centre) == token_text.replace("\n", "↵")
    assert first.count("wb-active") >= 1

    # The histogram counts every activation once.
    histogram = plotly(app, "histogram")["data"][0]
    assert sum(histogram["y"]) == n_active == len(values)

    # Nearest features: cosine of the saved decoder rows, computed here from the file.
    W_dec = load_file(str(app_store / "dictionaries" / "d" / "sae_weights.safetensors"))["W_dec"]
    unit = W_dec / W_dec.norm(dim=1, keepdim=True)
    cosines = unit @ unit[feature]
    cosines[feature] = -2
    best = int(cosines.argmax())
    first_link = next(link for link in app.get("page_link") if link.proto.label.startswith("feature "))
    assert first_link.proto.label == f"feature {best} · cos {cosines[best]:.3f}"

    # Logit effects: W_U (with the final norm's gain) times the decoder row, from the model's own files.
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
    logits = (model.lm_head.weight * model.model.norm.weight) @ W_dec[feature]
    boosted = plotly(app, "logits")["data"][1]
    assert boosted["x"][-1] == pytest.approx(logits.max().item(), rel=1e-4)  # bars run bottom-up: the top is last


def test_feature_pages_show_explanations_find_them_by_words_and_steer(app, app_store):
    from workbench.evals.common import LoadedDictionary
    from workbench.evals.steering import generate, steering
    from workbench.store import Store

    feature, explanation, detection = sql(
        app_store, "SELECT feature, explanation, detection FROM feature_explanations ORDER BY feature LIMIT 1"
    )[0]
    open_page(app, "views/features.py", dict="d", feature=str(feature))
    assert not app.exception
    assert any(m.value == f"**{explanation}**" for m in app.markdown)
    assert any(f"detection {detection:.2f}" in c.value for c in app.caption)
    word = max(explanation.split(), key=len)
    app.text_input(key="browse-about").input(word).run()
    found = next(df.value for df in app.dataframe if "explanation" in df.value.columns)
    assert feature in found["feature"].tolist() and all(word.lower() in e.lower() for e in found["explanation"])
    # The steering box generates what the library does with the same settings.
    app.text_input(key="steer-prompt").input("The cat")  # a form: the values apply together on submit
    app.number_input(key="steer-strength").set_value(300.0)
    app.number_input(key="steer-tokens").set_value(5)
    app.button[-1].click().run()
    assert not app.exception
    loaded = LoadedDictionary.load(Store.open_existing(app_store), "d", device="cpu")
    ids = loaded.prompt_ids("The cat")
    with steering(loaded.hf_model, loaded.record, loaded.sae, feature, 300.0, "add"):
        steered = generate(loaded, ids, 5, 0.0, 0)
    lines = [m.value for m in app.markdown if m.value.startswith("**Unsteered") or m.value.startswith("**Steered")]
    assert lines == [
        f"**Unsteered:** The cat*{generate(loaded, ids, 5, 0.0, 0)}*",
        f"**Steered (add 300):** The cat*{steered}*",
    ]


def test_browsing_by_token_ranks_features_by_how_often_they_fire_there(app, app_store):
    (token,) = sql(
        app_store,
        "SELECT trim(t.token) FROM feature_acts a JOIN tokens t USING (run, token_id) "
        "WHERE a.dictionary = 'd' AND regexp_matches(t.token, '[a-z]') GROUP BY 1 ORDER BY count(*) DESC LIMIT 1",
    )[0]
    expected = sql(
        app_store,
        "SELECT a.feature, count(*) AS n FROM feature_acts a JOIN tokens t USING (run, token_id) "
        "WHERE a.dictionary = 'd' AND lower(trim(t.token)) = lower(?) GROUP BY 1 "
        "ORDER BY n DESC, max(a.value) DESC LIMIT 5",
        [token],
    )
    open_page(app, "views/features.py", dict="d")
    app.text_input[0].input(token).run()
    table = next(df.value for df in app.dataframe if "n_on_token" in df.value.columns)
    assert list(zip(table["feature"][:5], table["n_on_token"][:5])) == expected
    assert (table["share"] <= 1).all() and table.loc[0, "page"] == f"features?dict=d&feature={expected[0][0]}"


def test_feature_page_explains_missing_data_and_bad_addresses(app, app_store):
    open_page(app, "views/features.py", dict="not-encoded")
    assert "workbench encode --store" in app.info[0].value and "--dict not-encoded" in app.info[0].value
    open_page(app, "views/features.py", dict="d", feature=5000)
    assert "Feature 5000 does not exist" in app.warning[0].value
    assert app.header[0].value.endswith("feature 127")


# -- text inspector ------------------------------------------------------------------------------------


def test_inspector_reproduces_the_stored_encoding_of_the_same_text(app, app_store):
    """Context 0 of the harvest, typed as a prompt, gives the same activations encode stored for it."""
    rows = sql(
        app_store,
        "SELECT token_id, doc_id, char_start, char_end, token FROM tokens WHERE run = 'h' "
        "AND context_id = 0 AND position > 0 ORDER BY position",
    )
    doc = rows[0][1]
    rows = [r for r in rows if r[1] == doc][:40]
    text = sql(app_store, "SELECT text FROM documents WHERE run = 'h' AND doc_id = ?", [doc])[0][0]
    prompt = text[rows[0][2] : rows[-1][3]]
    open_page(app, "views/inspector.py", dict="d")
    app.text_area[0].input(prompt).run()
    assert not app.exception
    table = next(df.value for df in app.dataframe if "activation" in df.value.columns)
    ids = [r[0] for r in rows]
    stored = sql(
        app_store,
        "SELECT token_id, feature, value FROM feature_acts WHERE dictionary = 'd' AND "
        "token_id IN (SELECT unnest(?::BIGINT[])) "
        "QUALIFY row_number() OVER (PARTITION BY token_id ORDER BY value DESC) <= 3",
        [ids],
    )
    expected = {(ids.index(t) + 1, f): v for t, f, v in stored}
    shown = {(int(p), int(f)): v for p, f, v in zip(table["position"], table["feature"], table["activation"])}
    assert shown.keys() == expected.keys()
    for key, value in expected.items():
        assert shown[key] == pytest.approx(value, rel=1e-3, abs=1e-4)
    # Every row links to its feature's page.
    assert all(link == f"features?dict=d&feature={f}" for link, f in zip(table["page"], table["feature"]))


# -- layer contributions ------------------------------------------------------------------------------


def test_layer_page_plots_the_stored_probe_results(app, app_store):
    open_page(app, "views/layers.py")
    assert app.query_params["probe"] in ("p", ["p"])
    norms = plotly(app, "norms")["data"]
    for trace in norms:
        stored = dict(
            sql(
                app_store,
                "SELECT layer, mean FROM probe_sublayer WHERE probe_run = 'p' AND metric = ?",
                [trace["name"]],
            )
        )
        assert [stored[layer] for layer in trace["x"]] == pytest.approx(trace["y"])
    heatmap = plotly(app, "skip-heatmap")["data"][0]
    for skipped, affected, value in sql(
        app_store, "SELECT skipped_layer, affected_layer, rel_change_mean FROM probe_skip_layers WHERE probe_run = 'p'"
    ):
        assert heatmap["z"][heatmap["y"].index(affected)][heatmap["x"].index(skipped)] == pytest.approx(value)
    lens = plotly(app, "lens")["data"][0]
    assert lens["y"] == pytest.approx(
        [r[0] for r in sql(app_store, "SELECT kl_mean FROM probe_logit_lens WHERE probe_run = 'p' ORDER BY layer")]
    )


def test_circuits_page_draws_the_stored_patching_scores(app, app_store):
    open_page(app, "views/circuits.py", run="ioi-patch")
    assert app.query_params["run"] in ("ioi-patch", ["ioi-patch"])
    clean, corrupted = sql(
        app_store, "SELECT metric_clean, metric_corrupted FROM circuit_runs WHERE circuit_run = 'ioi-patch'"
    )[0]
    assert (
        metric(app, "logit_diff, clean") == f"{clean:.3f}"
        and metric(app, "logit_diff, corrupted") == f"{corrupted:.3f}"
    )
    heads = plotly(app, "heads")["data"][0]
    for layer, head, score in sql(app_store, "SELECT layer, head, score FROM circuit_patching WHERE level = 'heads'"):
        assert heads["z"][heads["y"].index(layer)][heads["x"].index(head)] == pytest.approx(score)
    layers = plotly(app, "layers")["data"][0]
    assert len(layers["x"]) == sql(app_store, "SELECT seq_len FROM circuit_runs WHERE circuit_run = 'ioi-patch'")[0][0]
    assert layers["x"][1] == "1: 'When'"  # positions are labelled with the first clean prompt's tokens


def test_circuits_page_draws_the_attribution_graph_and_links_its_features(app, app_store):
    open_page(app, "views/circuits.py", graph="mary")
    replacement, completeness, kept = sql(
        app_store, "SELECT replacement_score, completeness_score, n_kept_nodes FROM circuit_graphs WHERE graph = 'mary'"
    )[0]
    assert metric(app, "Replacement score") == f"{replacement:.3f}"
    assert metric(app, "Completeness score") == f"{completeness:.3f}"
    figure = plotly(app, "graph")["data"]
    drawn = [node for trace in figure if trace.get("mode") == "markers" for node in trace["customdata"]]
    path = sql(app_store, "SELECT path FROM circuit_graphs WHERE graph = 'mary'")[0][0]
    data = json.loads((app_store / path).read_text())
    features = [n for n in data["nodes"] if n["feature_type"] == "cross layer transcoder"]
    assert len(drawn) == kept - len(features) + min(len(features), 60)  # every non-feature node, the top 60 features
    assert any(link.proto.label.startswith("tc1 · feature ") for link in app.get("page_link"))


def test_the_graph_page_pins_groups_saves_and_intervenes(app, app_store):
    from workbench.circuits.export import subgraph

    path = app_store / sql(app_store, "SELECT path FROM circuit_graphs WHERE graph = 'mary'")[0][0]
    original = path.read_text()
    data = json.loads(original)
    features = [n["node_id"] for n in data["nodes"] if n["feature_type"] == "cross layer transcoder"]
    assert len(features) >= 2
    try:
        open_page(app, "views/circuits.py", graph="mary")
        app.multiselect(key="graph-pinned").set_value(features[:2]).run()
        app.text_input(key="graph-group-name").set_value("pair").run()
        app.multiselect(key="graph-group-members").set_value(features[:2]).run()
        next(b for b in app.button if b.label == "Group them").click().run()
        app.button(key="graph-save").click().run()
        assert not app.exception, app.exception
        saved = json.loads(path.read_text())["qParams"]
        assert saved["pinnedIds"] == features[:2] and saved["supernodes"] == [["pair", *features[:2]]]
        # The subgraph draws the supernode as one node carrying both members' links.
        merged = subgraph(json.loads(path.read_text()), features[:2], [["pair", *features[:2]]])
        assert [n["node_id"] for n in merged["nodes"]] == ["pair"]
        app.multiselect(key="graph-intervene-nodes").set_value(features[:1]).run()
        app.button(key="graph-intervene").click().run()
        assert not app.exception, app.exception
        assert metric(app, "Actual change") and metric(app, "Predicted by the graph")
    finally:
        path.write_text(original)
        import duckdb

        con = duckdb.connect(str(app_store / "catalog.duckdb"))
        con.execute("DELETE FROM circuit_interventions WHERE graph = 'mary'")  # leave the shared store as it was
        con.close()


def test_circuits_page_shows_the_code_method_against_its_reference(app, app_store):
    open_page(app, "views/circuits.py", run="ioi-codes")
    auc, reference = sql(
        app_store, "SELECT roc_auc_heads, reference_run FROM circuit_runs WHERE circuit_run = 'ioi-codes'"
    )[0]
    assert reference == "ioi-patch" and metric(app, "ROC AUC, heads") == f"{auc:.3f}"
    grid = plotly(app, "code-heads")["data"][0]
    for layer, head, count in sql(
        app_store, "SELECT layer, head, unique_positive_codes FROM circuit_code_heads WHERE circuit_run = 'ioi-codes'"
    ):
        assert grid["z"][grid["y"].index(layer)][grid["x"].index(head)] == count
    assert any(link.proto.label.startswith("Open the reference ioi-patch") for link in app.get("page_link"))


# -- codes -------------------------------------------------------------------------------------------


def test_codes_page_lists_codes_and_their_contexts_from_the_store(app, app_store):
    site = CODEBOOK_SITES[1]
    open_page(app, "views/codes.py", codebook="cb", site=site)
    before, after = sql(app_store, "SELECT lm_loss_original, lm_loss_codebooks FROM codebooks WHERE name = 'cb'")[0]
    assert (
        metric(app, "LM loss, original model") == f"{before:.4f}"
        and metric(app, "LM loss, with codebooks") == f"{after:.4f}"
    )
    table = app.dataframe[0].value
    counts = dict(sql(app_store, "SELECT code, count(*) FROM codebook_codes WHERE site = ? GROUP BY code", [site]))
    assert dict(zip(table["code"], table["firings"])) == counts
    n_tokens = sql(app_store, "SELECT count(*) FROM tokens WHERE run = 'h'")[0][0]
    assert table["density"].sum() == pytest.approx(2 * sum(counts.values()) / (2 * n_tokens))  # k codes per token
    # The page opens on the commonest code; its contexts are the code's most similar firings, one per context.
    top = int(table["code"].iloc[0])
    assert app.number_input[0].value == top and app.query_params["code"] in (str(top), [str(top)])
    strips = [m.value for m in app.markdown if "wb-token" in m.value]
    best = sql(app_store, "SELECT max(similarity) FROM codebook_codes WHERE site = ? AND code = ?", [site, top])[0][0]
    assert 0 < len(strips) <= 12 and all("wb-centre" in strip and "wb-active" in strip for strip in strips)
    assert f'title="{best:.3f}"' in strips[0]
    tokens = app.dataframe[1].value
    assert (
        tokens["firings"].iloc[0]
        == sql(
            app_store,
            "SELECT count(*) FROM codebook_codes c JOIN tokens t USING (run, token_id) "
            "WHERE c.site = ? AND c.code = ? AND t.doc_id IS NOT NULL "
            "GROUP BY t.token ORDER BY 1 DESC LIMIT 1",
            [site, top],
        )[0][0]
    )


def test_codes_page_steers_generation_with_the_chosen_code(app, app_store):
    open_page(app, "views/codes.py", codebook="cb", site=CODEBOOK_SITES[0], code=3)
    app.text_input[0].set_value("The cat sat")
    app.button[0].click().run()
    assert not app.exception, app.exception
    generations = app.dataframe[-1].value
    assert list(generations.columns) == ["baseline", "steered"] and len(generations) == 4
    assert (generations["baseline"] != generations["steered"]).any()
    assert metric(app, "Baseline: share with a target") in {f"{i / 4:.2f}" for i in range(5)}


def test_codes_page_explains_a_codebook_without_stored_codes(app, app_store):
    with duckdb.connect(str(app_store / "catalog.duckdb")) as con:  # a second codebook row, same files, no codes
        con.execute("INSERT INTO codebooks SELECT * REPLACE ('cb-no-codes' AS name) FROM codebooks WHERE name = 'cb'")
    try:
        open_page(app, "views/codes.py", codebook="cb-no-codes")
        assert any("workbench codebook encode" in i.value and "cb-no-codes" in i.value for i in app.info)
    finally:
        with duckdb.connect(str(app_store / "catalog.duckdb")) as con:
            con.execute("DELETE FROM codebooks WHERE name = 'cb-no-codes'")


# -- SQL console --------------------------------------------------------------------------------------


def test_sql_console_shows_results_and_cuts_them_at_the_row_limit(app, app_store):
    open_page(app, "views/sql.py")
    app.text_area[0].input("SELECT token_id, token FROM tokens ORDER BY token_id").run()
    app.number_input[0].set_value(100).run()
    app.button[0].click().run()
    frame = app.dataframe[0].value
    assert len(frame) == 100 and list(frame["token_id"]) == list(range(100))
    assert any("cut at the row limit of 100" in c.value for c in app.main.caption)
    assert app.get("download_button")


@pytest.mark.parametrize(
    "statement",
    [
        "DELETE FROM runs",
        "DROP TABLE tokens",
        "UPDATE dictionaries SET k = 1",
        "ATTACH '/tmp/other.duckdb' AS other",
        "COPY runs TO '/tmp/leak.csv'",
        "INSTALL httpfs",
        "LOAD httpfs",
        "SET enable_external_access = true",
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM read_text('/etc/hostname')",
        "SELECT 1; DELETE FROM runs",
        "SELECT * FROM runs; DROP TABLE runs",
    ],
)
def test_sql_console_refuses_anything_that_writes_or_reads_outside_the_store(
    app, app_store, app_store_snapshot, statement
):
    before = app_store_snapshot
    open_page(app, "views/sql.py")
    app.text_area[0].input(statement)
    app.button[0].click().run()  # one run takes both the typed statement and the click
    assert not app.exception and len(app.error) == 1 and not app.dataframe
    message = app.error[0].value
    assert any(word in message for word in ("refused", "Refused", "exactly one statement")), message
    assert store_snapshot(app_store) == before
    assert not Path("/tmp/leak.csv").exists()


# -- stores the app cannot show ---------------------------------------------------------------------


def test_empty_store_pages_say_which_command_fills_them(store_dir, monkeypatch):
    Store.create_or_open(store_dir)
    monkeypatch.setenv("WORKBENCH_STORE", str(store_dir))
    at = AppTest.from_file(str(MAIN), default_timeout=60)
    at.run()
    assert "workbench harvest --model smollm2-135m" in at.info[0].value
    open_page(at, "views/features.py")
    assert "workbench train --store" in at.info[0].value
    open_page(at, "views/layers.py")
    assert "workbench probe depth" in at.info[0].value
    open_page(at, "views/circuits.py")
    assert "workbench circuit patch --task ioi" in at.info[0].value
    assert "workbench circuit graph --prompt" in at.info[1].value and "--out blocks.6.mlp.hook_out" in at.info[1].value


def test_old_store_is_refused_with_the_upgrade_command_and_left_as_it_was(store_dir, monkeypatch):
    run_harvest(HarvestConfig(model="tiny", hooks=[HOOK], store=str(store_dir), tokens=1024, run="h"), progress=False)
    downgrade_to_v1(store_dir)
    before = store_snapshot(store_dir)
    monkeypatch.setenv("WORKBENCH_STORE", str(store_dir))
    at = AppTest.from_file(str(MAIN), default_timeout=60)
    at.run()
    assert "workbench store upgrade" in at.error[0].value
    assert store_snapshot(store_dir) == before
    cli = run_cli("app", "--store", str(store_dir))
    assert cli.returncode == 2 and "workbench store upgrade" in cli.stderr


def test_app_keeps_serving_committed_data_while_a_harvest_writes(store_dir, monkeypatch):
    """A harvest commits chunk by chunk while the overview reloads; every load shows a committed state."""
    run_harvest(
        HarvestConfig(model="tiny", hooks=[HOOK], store=str(store_dir), tokens=4096, run="first"), progress=False
    )
    monkeypatch.setenv("WORKBENCH_STORE", str(store_dir))
    chunk_rows = 16 * 128
    writer = start_cli(
        "harvest",
        "--model",
        "tiny",
        "--hooks",
        HOOK,
        "--tokens",
        "32768",
        "--chunk-contexts",
        "16",
        "--store",
        str(store_dir),
        "--run",
        "live",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen = []
    try:
        deadline = time.monotonic() + 120
        while writer.poll() is None and time.monotonic() < deadline:
            at = AppTest.from_file(str(MAIN), default_timeout=60)
            at.run()
            assert not at.exception and not at.error
            seen.append(int(metric(at, "Activation rows").replace(",", "")))
    finally:
        writer.wait(timeout=120)
    assert writer.returncode == 0, writer.stderr.read()
    # Every load saw the first run plus whole committed chunks of the live one, never a partial chunk.
    assert len(seen) >= 2
    assert all((n - 4096) % chunk_rows == 0 and 4096 <= n <= 4096 + 32768 for n in seen), seen


# -- a real browser -------------------------------------------------------------------------------

CHROMIUM = Path("/usr/bin/chromium")
# Flags for a machine without a display or network: no sandbox as root, no calls home.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _wait_until_serving(url: str, server: subprocess.Popen, timeout_s: float = 90) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"`workbench app` exited early: {server.stderr.read()}")
        try:
            with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError("`workbench app` did not start serving within 90 s")


def test_feature_page_in_a_real_browser(app_store, tmp_path):
    """`workbench app` serves; Chromium opens the overview at / and at /overview, a feature by its URL and shows
    highlighted tokens and the histogram, then the Codes page, where it steers generation from the button."""
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail("Chromium is missing: `make test` installs it (apt-get install chromium).")
        pytest.skip("needs Debian's chromium (apt-get install chromium); `make test` installs it")
    from playwright.sync_api import sync_playwright

    (feature,) = sql(
        app_store, "SELECT feature FROM feature_stats WHERE dictionary = 'd' ORDER BY density DESC LIMIT 1"
    )[0]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_cli(
        "app",
        "--store",
        str(app_store),
        "--port",
        str(port),
        "--host",
        "127.0.0.1",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_until_serving(url, server)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            # The overview opens both at the root and at /overview, the address the README gives, and
            # neither answers "Page not found" (Streamlit serves a default page at the root only).
            for address in (f"{url}/", f"{url}/overview"):
                page.goto(address, timeout=60_000)
                page.get_by_role("heading", name="Harvest runs").wait_for(timeout=60_000)
                page.get_by_text("Probe runs").first.wait_for(timeout=60_000)  # the metrics row has rendered
                assert page.get_by_text("Page not found").count() == 0, address
                assert page.get_by_role("heading", name="Dictionaries").count() == 1, address
            page.goto(f"{url}/features?dict=d&feature={feature}", timeout=60_000)
            page.wait_for_selector(".wb-active", timeout=60_000)
            page.wait_for_selector(".js-plotly-plot .bars", timeout=60_000)  # the histogram's bars are drawn
            assert page.get_by_text(f"d · feature {feature}").count() == 1
            assert page.locator(".wb-context").count() >= 5
            assert page.locator(".wb-active").count() >= 5
            assert (
                page.locator(".wb-centre").first.evaluate("e => getComputedStyle(e).backgroundColor")
                != "rgba(0, 0, 0, 0)"
            )
            screenshot = tmp_path / "feature-page.png"
            page.screenshot(path=str(screenshot))
            # The Codes page by its address: a code's contexts, then steering from the button.
            page.goto(f"{url}/codes?codebook=cb&site={CODEBOOK_SITES[0]}", timeout=60_000)
            page.wait_for_selector(".wb-centre", timeout=60_000)
            assert page.locator(".wb-active").count() >= 1
            page.get_by_role("button", name="Generate").click()
            page.get_by_text("Baseline: share with a target").wait_for(timeout=120_000)
            codes_screenshot = tmp_path / "codes-page.png"
            page.screenshot(path=str(codes_screenshot), full_page=True)
            browser.close()
        assert screenshot.stat().st_size > 20_000 and screenshot.read_bytes()[:4] == b"\x89PNG"
        assert codes_screenshot.stat().st_size > 20_000
    finally:
        server.terminate()
        server.wait(timeout=30)
