"""workbench.plots: each figure plots exactly its input, with the labels and colour scales the pages promise.

Pure functions, so no model and no store: small frames shaped like the store's tables go in, and the
figure's traces are read back as the browser would get them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import pytest

from workbench import plots


def colours(figure: go.Figure) -> list[str]:
    """The colours of a figure's continuous colour scale, in order."""
    return [colour for _, colour in figure.layout.coloraxis.colorscale]


def cell(trace, x, y) -> float:
    """The value a heatmap trace draws at column label x and row label y."""
    return trace.z[list(trace.y).index(y)][list(trace.x).index(x)]


def assert_empty(figure: go.Figure, words: str) -> None:
    assert isinstance(figure, go.Figure) and len(figure.data) == 0
    assert words in figure.layout.annotations[0].text


# -- feature pages ----------------------------------------------------------------------------------


def test_activation_histogram_draws_one_bar_per_bin_at_its_centre():
    edges, counts = np.array([0.0, 0.5, 1.5, 3.0]), np.array([7, 0, 2])
    figure = plots.activation_histogram(edges, counts)
    (bar,) = figure.data
    assert bar.type == "bar"
    assert list(bar.x) == [0.25, 1.0, 2.25] and list(bar.width) == [0.5, 1.0, 1.5]
    assert list(bar.y) == [7, 0, 2] and sum(bar.y) == counts.sum()
    assert figure.layout.xaxis.title.text == "activation" and figure.layout.yaxis.title.text == "tokens"
    assert bar.marker.color == plots.POSITIVE


def test_activation_histogram_of_a_dead_feature_is_an_empty_figure_and_bad_edges_are_refused():
    assert_empty(plots.activation_histogram(np.array([]), np.array([])), "never fired")
    with pytest.raises(ValueError, match="one more edge than counts"):
        plots.activation_histogram(np.array([0.0, 1.0]), np.array([1, 2]))


def test_density_histogram_marks_the_feature_where_its_density_lies():
    densities = np.log10([1e-4, 1e-3, 1e-3, 1e-2])
    figure = plots.density_histogram(densities, marked=-3.0, label="feature 9")
    (histogram,) = figure.data
    assert histogram.type == "histogram" and list(histogram.x) == pytest.approx(densities.tolist())
    (line,) = figure.layout.shapes
    assert line.x0 == line.x1 == -3.0 and line.line.color == plots.POSITIVE
    assert figure.layout.annotations[0].text == "feature 9"
    assert figure.layout.xaxis.title.text == "log10 density" and figure.layout.yaxis.title.text == "features"
    # A dead feature has no density to mark.
    assert not plots.density_histogram(densities).layout.shapes
    assert_empty(plots.density_histogram(np.array([])), "encode")


def test_logit_effects_puts_the_strongest_token_of_each_side_on_top():
    boosts = [("Mary", 2.5), ("John", 1.0)]
    suppressions = [("the", -3.0), ("a", -0.5)]
    figure = plots.logit_effects(boosts, suppressions)
    suppressed, boosted = figure.data
    assert suppressed.type == boosted.type == "bar" and suppressed.orientation == boosted.orientation == "h"
    assert (suppressed.name, boosted.name) == ("suppressed", "boosted")
    # Bars run bottom-up: the last bar is drawn on top, and it is the strongest of its list.
    assert list(boosted.y) == ["John", "Mary"] and list(boosted.x) == [1.0, 2.5]
    assert list(suppressed.y) == ["a", "the"] and list(suppressed.x) == [-0.5, -3.0]
    assert boosted.marker.color == plots.POSITIVE and suppressed.marker.color == plots.NEGATIVE
    assert figure.layout.barmode == "relative" and figure.layout.xaxis.title.text == "logit change per unit"
    assert_empty(plots.logit_effects([], []), "No logit effects")


# -- layer pages --------------------------------------------------------------------------------------


@pytest.fixture
def sublayer() -> pd.DataFrame:
    """Shaped like probe_sublayer: one row per (layer, metric)."""
    rows = []
    for layer in range(3):
        rows += [
            (layer, "attn_norm_ratio", 0.1 * (layer + 1)),
            (layer, "mlp_norm_ratio", 0.2 * (layer + 1)),
            (layer, "cos_attn", -0.1 * layer),
            (layer, "cos_mlp", 0.3 - 0.2 * layer),
        ]
    return pd.DataFrame(rows, columns=["layer", "metric", "mean"])


def test_norm_ratios_draws_one_line_per_ratio_metric_with_the_stored_means(sublayer):
    figure = plots.norm_ratios(sublayer)
    assert sorted(trace.name for trace in figure.data) == ["attn_norm_ratio", "mlp_norm_ratio"]
    for trace in figure.data:
        assert trace.type == "scatter" and "markers" in trace.mode
        stored = sublayer[sublayer["metric"] == trace.name].set_index("layer")["mean"]
        assert list(trace.y) == pytest.approx([stored[layer] for layer in trace.x])
    assert figure.layout.yaxis.title.text == "mean ratio over tokens" and figure.layout.xaxis.title.text == "layer"
    assert_empty(plots.norm_ratios(sublayer[sublayer["metric"].str.startswith("cos_")]), "No norm ratios")


def test_sublayer_cosines_draws_the_cosine_metrics_around_a_zero_line(sublayer):
    figure = plots.sublayer_cosines(sublayer)
    assert sorted(trace.name for trace in figure.data) == ["cos_attn", "cos_mlp"]
    for trace in figure.data:
        stored = sublayer[sublayer["metric"] == trace.name].set_index("layer")["mean"]
        assert list(trace.y) == pytest.approx([stored[layer] for layer in trace.x])
    (zero,) = figure.layout.shapes
    assert zero.y0 == zero.y1 == 0
    assert figure.layout.yaxis.title.text == "mean cosine"
    assert_empty(plots.sublayer_cosines(sublayer.iloc[:0]), "No cosines")


def test_skip_heatmap_puts_each_stored_change_in_its_cell_on_a_scale_from_zero():
    skip = pd.DataFrame({"skipped_layer": [0, 0, 1], "affected_layer": [1, 2, 2], "rel_change_mean": [0.4, 0.1, 0.7]})
    figure = plots.skip_heatmap(skip)
    (heatmap,) = figure.data
    assert heatmap.type == "heatmap"
    for skipped, affected, value in skip.itertuples(index=False):
        assert cell(heatmap, skipped, affected) == pytest.approx(value)
    assert np.isnan(cell(heatmap, 1, 1))  # a layer cannot affect itself by being skipped: no value, no colour
    assert figure.layout.xaxis.title.text == "skipped layer" and figure.layout.yaxis.title.text == "affected layer"
    assert colours(figure) == px.colors.sequential.Reds
    assert_empty(plots.skip_heatmap(skip.iloc[:0]), "No layers were skipped")


def test_skip_output_kl_groups_the_two_kls_of_each_skipped_layer():
    output = pd.DataFrame({"skipped_layer": [0, 1], "kl_mean": [0.5, 0.2], "skipped_kl_mean": [1.5, 0.9]})
    figure = plots.skip_output_kl(output)
    later, at_skipped = figure.data
    assert later.type == at_skipped.type == "bar" and figure.layout.barmode == "group"
    assert list(later.x) == list(at_skipped.x) == [0, 1]
    assert list(later.y) == [0.5, 0.2] and list(at_skipped.y) == [1.5, 0.9]
    assert figure.layout.yaxis.title.text == "mean KL (nats)"
    assert_empty(plots.skip_output_kl(output.iloc[:0]), "No layers were skipped")


def test_logit_lens_draws_kl_on_the_left_and_overlap_on_a_right_axis_from_zero_to_one():
    lens = pd.DataFrame({"layer": [0, 1, 2], "kl_mean": [3.0, 1.5, 0.2], "top5_overlap_mean": [0.1, 0.4, 0.9]})
    figure = plots.logit_lens(lens)
    kl, overlap = figure.data
    assert list(kl.x) == [0, 1, 2] and list(kl.y) == [3.0, 1.5, 0.2]
    assert list(overlap.y) == [0.1, 0.4, 0.9] and overlap.yaxis == "y2" and kl.yaxis in (None, "y")
    assert figure.layout.yaxis.title.text == "KL (nats)" and figure.layout.yaxis2.title.text == "top-5 overlap"
    assert tuple(figure.layout.yaxis2.range) == (0, 1)
    assert_empty(plots.logit_lens(lens.iloc[:0]), "no logit lens")


def test_linear_map_errors_labels_the_axes_with_the_two_models():
    maps = pd.DataFrame({"source_layer": [0, 0, 1, 1], "target_layer": [0, 1, 0, 1], "rel_error": [0.2, 0.6, 0.5, 0.1]})
    figure = plots.linear_map_errors(maps, "small", "big")
    (heatmap,) = figure.data
    for source, target, value in maps.itertuples(index=False):
        assert cell(heatmap, source, target) == pytest.approx(value)
    assert figure.layout.xaxis.title.text == "small layer" and figure.layout.yaxis.title.text == "big layer"
    assert colours(figure) == px.colors.sequential.Reds_r  # low error = alike = dark
    assert_empty(plots.linear_map_errors(maps.iloc[:0], "small", "big"), "No linear maps")


# -- circuit pages ----------------------------------------------------------------------------------


def test_score_heatmap_centres_signed_scores_on_zero():
    frame = pd.DataFrame({"layer": [0, 0, 1, 1], "head": [0, 1, 0, 1], "score": [0.5, -2.5, 0.1, 1.5]})
    figure = plots.score_heatmap(frame, "head", "layer", dict(x="head", y="layer", color="score"))
    (heatmap,) = figure.data
    for layer, head, score in frame.itertuples(index=False):
        assert cell(heatmap, head, layer) == score
    axis = figure.layout.coloraxis
    assert axis.cmin == -axis.cmax == -2.5  # symmetric, so white is 0
    assert colours(figure) == px.colors.sequential.RdBu_r
    assert figure.layout.xaxis.title.text == "head" and figure.layout.yaxis.title.text == "layer"
    # Small scores still span at least ±1: a weak run does not look as strong as a decisive one.
    weak = plots.score_heatmap(frame.assign(score=frame["score"] / 10), "head", "layer", {})
    assert (weak.layout.coloraxis.cmin, weak.layout.coloraxis.cmax) == (-1.0, 1.0)


def test_score_heatmap_of_counts_starts_at_zero_and_labels_positions_with_tokens():
    frame = pd.DataFrame({"layer": [0, 0, 1], "position": [0, 1, 2], "score": [3, 8, 1]})
    figure = plots.score_heatmap(frame, "position", "layer", {}, x_labels=["<bos>", "When"], counts=True)
    (heatmap,) = figure.data
    assert list(heatmap.x) == ["0: '<bos>'", "1: 'When'", "2"]  # a position past the labels keeps its number
    assert cell(heatmap, "1: 'When'", 0) == 8
    assert (figure.layout.coloraxis.cmin, figure.layout.coloraxis.cmax) == (0.0, 8.0)
    assert colours(figure) == px.colors.sequential.Reds
    assert_empty(plots.score_heatmap(frame.iloc[:0], "position", "layer", {}), "No scores")


def graph_data(n_features: int = 5) -> dict:
    """A small graph in circuit-tracer's JSON scheme: embeddings, features, an error node and a logit."""
    nodes = [
        {
            "node_id": f"E_{i}_{i}",
            "layer": "E",
            "ctx_idx": i,
            "feature_type": "embedding",
            "influence": 0.2,
            "activation": 0.0,
            "clerp": f"emb {i}",
        }
        for i in range(2)
    ]
    nodes += [
        {
            "node_id": f"0_{f}_1",
            "layer": "0",
            "ctx_idx": 1,
            "feature_type": "cross layer transcoder",
            "influence": 0.9 - 0.1 * f,  # circuit-tracer's cumulative share
            "node_influence": 0.1 * (f + 1),
            "activation": 1.0,
            "clerp": f"feature {f}",
            "feature": f,
        }
        for f in range(n_features)
    ]
    nodes += [
        {
            "node_id": "0_-1_1",
            "layer": "0",
            "ctx_idx": 1,
            "feature_type": "mlp reconstruction error",
            "influence": 0.05,
            "activation": 0.0,
            "clerp": "error",
        },
        {
            "node_id": "L_7_1",
            "layer": "2",
            "ctx_idx": 1,
            "feature_type": "logit",
            "influence": 1.0,
            "activation": 0.0,
            "clerp": "logit",
        },
    ]
    links = [{"source": "E_0_0", "target": f"0_{f}_1", "weight": 0.1 * (f + 1) ** 2} for f in range(n_features)]
    links += [{"source": f"0_{f}_1", "target": "L_7_1", "weight": -0.5} for f in range(n_features)]
    links += [{"source": "E_1_1", "target": "L_7_1", "weight": 0.001}]  # under 2% of the strongest
    return {"nodes": nodes, "links": links, "metadata": {"prompt_tokens": ["<bos>", "Mary"]}}


def test_attribution_graph_draws_every_other_node_and_the_most_influential_features():
    data = graph_data(5)
    figure, features = plots.attribution_graph(data, min_share=0.02, max_features=3)
    assert [n["feature"] for n in features] == [4, 3, 2]  # most influential first
    markers = [trace for trace in figure.data if trace.mode == "markers"]
    drawn = [node for trace in markers for node in trace.customdata]
    assert sorted(drawn) == sorted(["E_0_0", "E_1_1", "0_-1_1", "L_7_1", "0_4_1", "0_3_1", "0_2_1"])
    by_kind = {trace.name: trace for trace in markers}
    assert by_kind["cross layer transcoder"].marker.color == plots.POSITIVE
    # Links: positive warm, negative cool; those to hidden features and the one under min_share are not drawn.
    lines = [trace for trace in figure.data if trace.mode == "lines"]
    positive = sum(len(t.x) // 3 for t in lines if t.line.color == plots.POSITIVE)
    negative = sum(len(t.x) // 3 for t in lines if t.line.color == plots.NEGATIVE)
    assert (positive, negative) == (3, 3)
    assert max(t.line.width for t in lines) > min(t.line.width for t in lines)  # the strongest drawn thickest
    assert list(figure.layout.xaxis.ticktext) == ["<bos>", "Mary"]
    assert list(figure.layout.yaxis.ticktext) == ["emb", "0", "logit"]


def test_attribution_graph_without_nodes_is_an_empty_figure():
    figure, features = plots.attribution_graph({"nodes": [], "links": [], "metadata": {"prompt_tokens": []}}, 0.02, 60)
    assert features == []
    assert_empty(figure, "no nodes")


def test_score_bands_draw_each_dictionary_at_its_mean_with_its_seed_spread():
    frame = pd.DataFrame(
        {
            "dictionary": ["a", "b", "a"],
            "metric": ["FVU", "FVU", "absorption"],
            "mean": [0.1, 0.2, 0.5],
            "std": [0.01, None, 0.05],
            "seeds": [3, 1, 3],
        }
    )
    figure = plots.score_bands(frame)
    fvu, absorption = figure.data
    assert list(fvu.x) == ["a", "b"] and list(fvu.y) == [0.1, 0.2]
    assert list(fvu.error_y.array) == [0.01, 0.0]  # one seed: no band
    assert list(absorption.y) == [0.5] and list(absorption.error_y.array) == [0.05]
    assert [a.text for a in figure.layout.annotations] == ["FVU", "absorption"]
    assert plots.score_bands(frame.iloc[:0]).layout.annotations[0].text.startswith("No evaluation scores")
