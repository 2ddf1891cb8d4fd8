"""Every figure the app draws, as pure functions: data in, `plotly.graph_objects.Figure` out.

Nothing here knows about Streamlit or the store, so analyses and notebooks draw the same figures
the app shows (`figure.show()` or `figure.write_html(...)`), and tests check them without a page.
Empty input gives an empty figure that says so, never an exception.

    Feature pages     activation_histogram, density_histogram, logit_effects
    Layer pages       norm_ratios, sublayer_cosines, skip_heatmap, skip_output_kl, logit_lens, linear_map_errors
    Circuit pages     score_heatmap, attribution_graph
    Overview          score_bands (evaluations with their seed bands)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
from plotly.subplots import make_subplots

# One palette everywhere: warm for positive (fires, boosts), cool for negative (suppresses).
POSITIVE = "#d6604d"
NEGATIVE = "#4393c3"
SEQUENTIAL = "Reds"  # for magnitudes that are never negative
# Diverging scale for signed scores, always centred on 0: red restores the clean behaviour, blue pushes the
# other way.
DIVERGING = "RdBu_r"
MARGIN = dict(l=10, r=10, t=10, b=10)
TITLED_MARGIN = dict(l=10, r=10, t=30, b=10)  # room for a figure title


def empty_figure(message: str, height: int = 240) -> go.Figure:
    """A figure with no traces that says why, for empty input."""
    figure = go.Figure()
    figure.add_annotation(text=message, showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5)
    figure.update_layout(height=height, margin=MARGIN, xaxis=dict(visible=False), yaxis=dict(visible=False))
    return figure


# -- feature pages --------------------------------------------------------------------------------


def activation_histogram(edges: np.ndarray, counts: np.ndarray) -> go.Figure:
    """A feature's activations as bars: one per bin between consecutive `edges`, `counts` high."""
    edges, counts = np.asarray(edges, dtype=float), np.asarray(counts)
    if len(counts) == 0:
        return empty_figure("No activations: this feature never fired.", 260)
    if len(edges) != len(counts) + 1:
        raise ValueError(f"A histogram needs one more edge than counts; got {len(edges)} edges, {len(counts)} counts.")
    centres = (edges[:-1] + edges[1:]) / 2
    figure = go.Figure(go.Bar(x=centres, y=counts, marker_color=POSITIVE, width=np.diff(edges), name="activations"))
    figure.update_layout(height=260, margin=MARGIN, xaxis_title="activation", yaxis_title="tokens", bargap=0.02)
    return figure


def density_histogram(log_densities: np.ndarray, marked: float | None = None, label: str = "") -> go.Figure:
    """How log10 firing densities spread over a dictionary's features; `marked` (a log10 density) draws a line
    labelled `label` where one feature sits."""
    log_densities = np.asarray(log_densities, dtype=float)
    if len(log_densities) == 0:
        return empty_figure("No feature statistics: encode the dictionary first.", 220)
    figure = go.Figure(go.Histogram(x=log_densities, nbinsx=50, marker_color="#bbbbbb", name="features"))
    if marked is not None:
        figure.add_vline(x=float(marked), line_color=POSITIVE, line_width=3, annotation_text=label)
    figure.update_layout(height=220, margin=MARGIN, xaxis_title="log10 density", yaxis_title="features")
    return figure


def logit_effects(boosts: Sequence[tuple[str, float]], suppressions: Sequence[tuple[str, float]]) -> go.Figure:
    """Horizontal bars of the tokens a direction boosts (warm) and suppresses (cool), strongest first in each list.

    The bars run bottom-up, so each list is drawn reversed: its strongest token ends up on top."""
    if not boosts and not suppressions:
        return empty_figure("No logit effects to show.", 480)
    figure = go.Figure()
    figure.add_bar(
        y=[t for t, _ in suppressions][::-1],
        x=[v for _, v in suppressions][::-1],
        orientation="h",
        marker_color=NEGATIVE,
        name="suppressed",
    )
    figure.add_bar(
        y=[t for t, _ in boosts][::-1],
        x=[v for _, v in boosts][::-1],
        orientation="h",
        marker_color=POSITIVE,
        name="boosted",
    )
    figure.update_layout(height=480, margin=MARGIN, xaxis_title="logit change per unit", barmode="relative")
    return figure


# -- layer pages (depth-usage and linear-map probes) ------------------------------------------------


def _metric_lines(frame: pd.DataFrame, y_label: str, title: str) -> go.Figure:
    figure = px.line(frame, x="layer", y="mean", color="metric", markers=True, labels={"mean": y_label})
    figure.update_layout(title=title, height=360, margin=TITLED_MARGIN)
    return figure


def norm_ratios(sublayer: pd.DataFrame) -> go.Figure:
    """One line per norm-ratio metric of a probe's `probe_sublayer` table (layer, metric, mean): how large each
    sublayer's write is next to the residual it adds to."""
    ratios = sublayer[sublayer["metric"].str.endswith("norm_ratio")]
    if ratios.empty:
        return empty_figure("No norm ratios in this probe run.", 360)
    return _metric_lines(ratios, "mean ratio over tokens", "‖a‖/‖h‖, ‖m‖/‖h+a‖ and ‖a+m‖/‖h‖ per layer")


def sublayer_cosines(sublayer: pd.DataFrame) -> go.Figure:
    """One line per cosine metric (`cos_*`) of a probe's `probe_sublayer` table, with a dotted line at 0:
    below it a sublayer erases what the residual holds."""
    cosines = sublayer[sublayer["metric"].str.startswith("cos_")]
    if cosines.empty:
        return empty_figure("No cosines in this probe run.", 360)
    figure = _metric_lines(
        cosines, "mean cosine", "Cosine of each sublayer's write with the residual (negative = erases)"
    )
    figure.add_hline(y=0, line_color="#888", line_dash="dot")
    return figure


def skip_heatmap(skip: pd.DataFrame) -> go.Figure:
    """The `probe_skip_layers` table as a grid: skipped layer (x) by affected layer (y), coloured by the relative
    change of the affected layer's update (never negative, so a sequential scale from 0)."""
    if skip.empty:
        return empty_figure("No layers were skipped in this probe run.", 480)
    grid = skip.pivot(index="affected_layer", columns="skipped_layer", values="rel_change_mean")
    figure = px.imshow(
        grid,
        color_continuous_scale=SEQUENTIAL,
        origin="lower",
        aspect="auto",
        labels=dict(x="skipped layer", y="affected layer", color="‖Δ−Δskip‖/‖Δ‖"),
    )
    figure.update_layout(
        title="Skipping a layer: relative change of each later layer's update", height=480, margin=TITLED_MARGIN
    )
    return figure


def skip_output_kl(output: pd.DataFrame) -> go.Figure:
    """Grouped bars per skipped layer from `probe_skip_output`: the KL of the output distribution at later
    positions (warm) and at the skipped positions themselves (cool)."""
    if output.empty:
        return empty_figure("No layers were skipped in this probe run.", 360)
    figure = go.Figure()
    figure.add_bar(x=output["skipped_layer"], y=output["kl_mean"], name="KL at later positions", marker_color=POSITIVE)
    figure.add_bar(
        x=output["skipped_layer"], y=output["skipped_kl_mean"], name="KL at skipped positions", marker_color=NEGATIVE
    )
    figure.update_layout(
        title="Skipping a layer: KL of the output distribution",
        xaxis_title="skipped layer",
        yaxis_title="mean KL (nats)",
        barmode="group",
        height=360,
        margin=TITLED_MARGIN,
    )
    return figure


def logit_lens(lens: pd.DataFrame) -> go.Figure:
    """The `probe_logit_lens` table by layer: KL to the final distribution (left axis) and top-5 overlap with it
    (right axis, 0 to 1)."""
    if lens.empty:
        return empty_figure("This probe run has no logit lens.", 360)
    figure = go.Figure()
    figure.add_scatter(
        x=lens["layer"], y=lens["kl_mean"], name="KL to final (nats)", mode="lines+markers", line_color=POSITIVE
    )
    figure.add_scatter(
        x=lens["layer"],
        y=lens["top5_overlap_mean"],
        name="top-5 overlap",
        yaxis="y2",
        mode="lines+markers",
        line_color=NEGATIVE,
    )
    figure.update_layout(
        title="Logit lens",
        xaxis_title="layer",
        yaxis_title="KL (nats)",
        yaxis2=dict(title="top-5 overlap", overlaying="y", side="right", range=[0, 1]),
        height=360,
        margin=TITLED_MARGIN,
    )
    return figure


def linear_map_errors(maps: pd.DataFrame, source_model: str, target_model: str) -> go.Figure:
    """The `probe_linear_maps` table as a grid: source layer (x) by target layer (y), coloured by the relative
    error of the best linear map between them (reversed sequential scale: dark = alike)."""
    if maps.empty:
        return empty_figure("No linear maps in this probe run.", 520)
    grid = maps.pivot(index="target_layer", columns="source_layer", values="rel_error")
    figure = px.imshow(
        grid,
        color_continuous_scale=SEQUENTIAL + "_r",
        origin="lower",
        aspect="auto",
        labels=dict(x=f"{source_model} layer", y=f"{target_model} layer", color="rel. error"),
    )
    figure.update_layout(height=520, margin=TITLED_MARGIN)
    return figure


# -- circuit pages ---------------------------------------------------------------------------------


def score_heatmap(
    frame: pd.DataFrame, x: str, y: str, labels: dict, x_labels: Sequence[str] | None = None, counts: bool = False
) -> go.Figure:
    """A grid of `frame`'s `score` column by columns `x` and `y`.

    Signed scores (patching) get the diverging scale centred on 0, symmetric and at least ±1, so that colour
    means the same in every run. Counts (codes) are never negative and get the warm half from 0. `x_labels`
    names integer x positions (a prompt's tokens): column i becomes "i: 'token'"."""
    if frame.empty:
        return empty_figure("No scores to draw.", 320)
    grid = frame.pivot(index=y, columns=x, values="score")
    if x_labels is not None:
        grid.columns = [f"{i}: {x_labels[i]!r}" if i < len(x_labels) else str(i) for i in grid.columns]
    if counts:
        scale, low, high = SEQUENTIAL, 0.0, max(1.0, float(frame["score"].max()))
    else:
        bound = max(1.0, float(frame["score"].abs().max()))
        scale, low, high = DIVERGING, -bound, bound
    figure = px.imshow(
        grid, color_continuous_scale=scale, zmin=low, zmax=high, origin="lower", aspect="auto", labels=labels
    )
    figure.update_layout(height=max(320, 22 * len(grid) + 120), margin=MARGIN)
    return figure


FEATURE_NODE = "cross layer transcoder"
NODE_COLOURS = {
    "embedding": "#444444",
    FEATURE_NODE: POSITIVE,
    "mlp reconstruction error": "#aaaaaa",
    "logit": "#000000",
}


def attribution_graph(data: dict, min_share: float, max_features: int) -> tuple[go.Figure, list[dict]]:
    """An attribution graph (circuit-tracer's JSON) drawn by position (x) and layer (y), and the feature nodes
    drawn, most influential first.

    Every non-feature node is drawn, plus the `max_features` most influential features; nodes are sized by
    influence. Links between drawn nodes at least `min_share` of the strongest are drawn, warm if positive and
    cool if negative, thicker the stronger."""
    nodes = data.get("nodes", [])
    if not nodes:
        return empty_figure("This graph has no nodes.", 620), []
    # circuit-tracer's layout: embeddings at layer "E", targets at layer n_layers + 1; its `influence` is a node's
    # cumulative share (smaller = more influential), ours adds the node's own as `node_influence`.
    n_layers = max([int(n["layer"]) for n in nodes if n["layer"].isdigit() and n["feature_type"] != "logit"] + [0]) + 1

    def own(node: dict) -> float:
        return node.get("node_influence", 1 - node["influence"])

    features = sorted((n for n in nodes if n["feature_type"] == FEATURE_NODE), key=lambda n: -own(n))
    features = features[:max_features]
    shown = [n for n in nodes if n["feature_type"] != FEATURE_NODE] + features
    ids = {n["node_id"] for n in shown}
    # Several nodes share a (layer, position) cell: spread them sideways so each can be hovered.
    cells: dict[tuple, int] = {}
    position = {}
    for node in shown:
        cell = (node["layer"], node["ctx_idx"])
        slot = cells.get(cell, 0)
        cells[cell] = slot + 1
        position[node["node_id"]] = (
            node["ctx_idx"] + 0.12 * ((slot + 1) // 2) * (-1) ** slot,
            n_layers if node["feature_type"] == "logit" else -1 if node["layer"] == "E" else int(node["layer"]),
        )
    links = [link for link in data.get("links", []) if link["source"] in ids and link["target"] in ids]
    largest = max([abs(link["weight"]) for link in links] + [1e-12])
    links = [link for link in links if abs(link["weight"]) >= min_share * largest]
    figure = go.Figure()
    for sign, colour in ((1, POSITIVE), (-1, NEGATIVE)):
        for low, high, width in ((0.0, 0.2, 0.6), (0.2, 0.5, 1.6), (0.5, 1.01, 3.2)):
            xs, ys = [], []
            for link in links:
                share = abs(link["weight"]) / largest
                if (link["weight"] > 0) == (sign > 0) and low <= share < high:
                    (x0, y0), (x1, y1) = position[link["source"]], position[link["target"]]
                    xs += [x0, x1, None]
                    ys += [y0, y1, None]
            if xs:
                figure.add_scatter(
                    x=xs,
                    y=ys,
                    mode="lines",
                    line=dict(color=colour, width=width),
                    opacity=0.55,
                    hoverinfo="skip",
                    showlegend=False,
                )
    top = max(own(n) for n in shown) or 1.0
    for kind, colour in NODE_COLOURS.items():
        group = [n for n in shown if n["feature_type"] == kind]
        if not group:
            continue
        figure.add_scatter(
            x=[position[n["node_id"]][0] for n in group],
            y=[position[n["node_id"]][1] for n in group],
            mode="markers",
            name=kind,
            marker=dict(
                color=colour,
                size=[8 + 22 * min(own(n) / top, 1) for n in group],
                line=dict(color="#222", width=0.5),
            ),
            text=[
                f"{n['clerp'] or n['node_id']}<br>activation {n['activation']:.3f}<br>influence {own(n):.3f}"
                for n in group
            ],  # fmt: skip
            hoverinfo="text",
            customdata=[n["node_id"] for n in group],
        )
    tokens = data["metadata"]["prompt_tokens"]
    figure.update_layout(
        height=620,
        margin=MARGIN,
        legend=dict(orientation="h"),
        xaxis=dict(tickmode="array", tickvals=list(range(len(tokens))), ticktext=tokens, title=None),
        yaxis=dict(
            tickmode="array",
            tickvals=list(range(-1, n_layers + 1)),
            ticktext=["emb"] + [str(i) for i in range(n_layers)] + ["logit"],
            title="layer",
        ),
    )
    return figure, features


def score_bands(frame: pd.DataFrame) -> go.Figure:
    """Evaluation scores with their seed bands: one panel per metric, one point per dictionary at the mean, error
    bars of ± one standard deviation over its seeds (none for a single seed). Columns: dictionary, metric, mean,
    std, seeds."""
    if frame.empty:
        return empty_figure("No evaluation scores yet: run `workbench eval --benchmarks all`.")
    metrics = list(dict.fromkeys(frame["metric"]))
    columns = min(len(metrics), 4)
    rows = -(-len(metrics) // columns)
    figure = make_subplots(rows=rows, cols=columns, subplot_titles=metrics, horizontal_spacing=0.08)
    for index, metric in enumerate(metrics):
        part = frame[frame["metric"] == metric]
        figure.add_trace(
            go.Scatter(
                x=part["dictionary"],
                y=part["mean"],
                error_y=dict(type="data", array=part["std"].fillna(0.0), visible=True),
                mode="markers",
                marker=dict(color=POSITIVE, size=9),
                name=metric,
                customdata=part["seeds"],
                hovertemplate="%{x}: %{y:.4f} ± %{error_y.array:.4f} over %{customdata} seeds<extra></extra>",
                showlegend=False,
            ),
            row=index // columns + 1,
            col=index % columns + 1,
        )
    figure.update_layout(height=260 * rows, margin=TITLED_MARGIN)
    return figure
