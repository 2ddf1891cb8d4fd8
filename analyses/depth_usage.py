"""Do SmolLM2-135M and Gemma 3 270M use their depth efficiently? (after Csordás, Manning & Potts, 2025)

    python analyses/depth_usage.py [--store store/] [--tokens 8192] [--models smollm2-135m,gemma3-270m]

Runs the depth-usage probes on each model over two tasks, the default prose corpus and
generated multi-digit additions, plus linear maps from SmolLM2's layers to Gemma 3's
(two tokenizers: tokens are aligned by the character where they end) and from each model to
itself. Then it prints, per model, a summary that answers the paper's questions:
  1. Is there a phase transition between the first and second half of the layers?
  2. How much does skipping a second-half layer change later computation, and the output,
     compared with skipping a first-half layer?
  3. Where does the logit lens start to agree with the output?
  4. Does the harder task (arithmetic) use more depth than prose?
  5. Which layers of one model does a linear map predict best from which layers of the other?
Plots go to analyses/output/depth_usage/ as PNG and one interactive HTML page per model. All
results are also in the store (tables probe_*), where the app's Layer-contributions page reads them.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the CLI does; see workbench/cli/__init__.py

import numpy as np

from workbench.probes.depth import DepthProbeConfig, run_depth_probes
from workbench.probes.linear_maps import LinearMapsConfig, run_linear_maps
from workbench.store import Store

MODELS = ("smollm2-135m", "gemma3-270m")
LABELS = {"smollm2-135m": "SmolLM2-135M", "gemma3-270m": "Gemma 3 270M"}


def write_addition_corpus(path: Path, n_problems: int = 3000, seed: int = 0) -> None:
    """Multi-digit additions; SmolLM2's tokenizer gives every digit its own token."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n_problems):
        a, b = rng.randint(100, 99999), rng.randint(100, 99999)
        lines.append(f"{a} + {b} = {a + b}")
    path.write_text("\n".join(lines) + "\n")


def query(store: Store, sql: str, params=()) -> list[tuple]:
    with store.reader() as con:
        return con.execute(sql, list(params)).fetchall()


def halves(n_layers: int) -> tuple[range, range]:
    return range(0, n_layers // 2), range(n_layers // 2, n_layers)


def summarize(store: Store, label: str, prose: str, math: str, maps: str) -> tuple[str, dict]:
    n_layers = query(store, "SELECT n_layers FROM probe_runs WHERE probe_run = ?", [prose])[0][0]
    first, second = halves(n_layers)
    sub = {
        (l, m): v
        for l, m, v in query(store, "SELECT layer, metric, mean FROM probe_sublayer WHERE probe_run = ?", [prose])
    }
    skip = query(
        store,
        "SELECT skipped_layer, affected_layer, rel_change_mean FROM probe_skip_layers WHERE probe_run = ?",
        [prose],
    )
    out = {
        s: (kl, kls)
        for s, kl, kls in query(
            store, "SELECT skipped_layer, kl_mean, skipped_kl_mean FROM probe_skip_output WHERE probe_run = ?", [prose]
        )
    }
    lens = {
        l: (kl, top5)
        for l, kl, top5 in query(
            store, "SELECT layer, kl_mean, top5_overlap_mean FROM probe_logit_lens WHERE probe_run = ?", [prose]
        )
    }
    scores = {
        (run, m): (d, r)
        for run, m, d, r in query(
            store,
            "SELECT probe_run, measure, depth_score, relative_depth_score FROM probe_depth_scores "
            "WHERE probe_run IN (?, ?)",
            [prose, math],
        )
    }
    maps_grid = query(
        store, "SELECT source_layer, target_layer, rel_error FROM probe_linear_maps WHERE probe_run = ?", [maps]
    )

    def mean_over(layers, values: dict, index=None):
        picked = [values[l] if index is None else values[l][index] for l in layers if l in values]
        return float(np.mean(picked)) if picked else float("nan")

    ratio = {l: sub[l, "layer_norm_ratio"] for l in range(n_layers)}
    cos_next = {l: sub[l, "cos_next_resid"] for l in range(n_layers)}
    # Effect of skipping s on the *later* layers' updates: mean over affected layers > s.
    later = {
        s: float(np.mean([v for ss, a, v in skip if ss == s]))
        for s in {ss for ss, _, _ in skip}
        if any(ss == s for ss, _, _ in skip)
    }
    figures = dict(
        n_layers=n_layers,
        ratio=ratio,
        cos_next=cos_next,
        later=later,
        out=out,
        lens=lens,
        scores=scores,
        skip=skip,
        sub=sub,
        maps=maps_grid,
    )
    half_lens = next((l for l in range(n_layers) if lens.get(l, (0, 0))[1] >= 0.5), None)
    lines = [
        f"{label}, {n_layers} layers; first half = layers 0-{first[-1]}, second half = layers {second[0]}-{second[-1]}.",
        "",
        "1. Phase transition between the halves?",
        f"   ||a+m||/||h|| (a layer's write relative to the residual), mean: first half {mean_over(first, ratio):.3f}, "
        f"second half {mean_over(second, ratio):.3f}.",
        f"   cos(h_l+1, h_l), mean: first half {mean_over(first, cos_next):.3f}, second half {mean_over(second, cos_next):.3f}.",
        "   per layer ||a+m||/||h||: " + " ".join(f"{ratio[l]:.2f}" for l in range(n_layers)),
        "",
        "2. Skipping a layer (before position t), effect at positions >= t:",
        f"   on later layers' updates (mean relative change): first-half layers {mean_over(first, later):.3f}, "
        f"second-half layers {mean_over(second, later):.3f}.",
        f"   on the output, KL: first-half layers {mean_over(first, out, 0):.4f}, second-half layers {mean_over(second, out, 0):.4f}.",
        f"   on the output at the skipped positions themselves, KL: first half {mean_over(first, out, 1):.4f}, "
        f"second half {mean_over(second, out, 1):.4f}.",
        "   per layer, output KL at skipped positions: "
        + " ".join(f"{out[l][1]:.3f}" for l in range(n_layers) if l in out),
        "",
        "3. Logit lens (KL to the final distribution, top-5 overlap):",
        "   " + "  ".join(f"L{l}:{lens[l][0]:.2f}/{lens[l][1]:.2f}" for l in range(0, n_layers, 3) if l in lens),
        f"   first layer whose lens shares at least half of the final top-5: {half_lens}",
        "",
        "4. Depth score (effect-weighted mean layer, relative to the last layer):",
    ]
    for run, task in ((prose, "prose"), (math, "addition")):
        for measure in ("skipped_positions_kl", "future_positions_kl"):
            if (run, measure) in scores:
                d, r = scores[run, measure]
                lines.append(f"   {task:9s} {measure:22s} layer {d:5.2f}  ({r:.2f} of the depth)")
    if maps_grid:
        diag_next = [e for i, j, e in maps_grid if j == i + 1]
        far = [e for i, j, e in maps_grid if j >= i + n_layers // 2]
        lines += [
            "",
            f"5. Linear maps between {label}'s own layers (held-out relative error):",
            f"   layer i -> i+1: mean {np.mean(diag_next):.3f}; layer i -> i + {n_layers // 2} or more: mean {np.mean(far):.3f}.",
        ]
    return "\n".join(lines), figures


def cross_model_summary(store: Store, maps: str, source: str, target: str) -> tuple[str, np.ndarray]:
    """Which source layer predicts each target layer best, and whether that follows relative depth.

    Read per target layer: target layers differ in how predictable they are at all (Gemma's first layers are
    dominated by a few huge, easily predicted dimensions), so the best target per source says little."""
    grid = query(
        store,
        "SELECT source_layer, target_layer, rel_error FROM probe_linear_maps WHERE probe_run = ?",
        [maps],
    )
    aligned = query(store, "SELECT n_tokens FROM probe_runs WHERE probe_run = ?", [maps])[0][0]
    n_source, n_target = max(i for i, _, _ in grid) + 1, max(j for _, j, _ in grid) + 1
    errors = np.full((n_source, n_target), np.nan)
    for i, j, e in grid:
        errors[i, j] = e
    best = errors.argmin(0)  # per target layer
    relative_target = (np.arange(n_target) + 1) / n_target
    relative_best = (best + 1) / n_source
    correlation = float(np.corrcoef(relative_target, relative_best)[0, 1]) if best.std() > 0 else float("nan")
    lines = [
        f"Linear maps from {LABELS.get(source, source)} ({n_source} layers) to {LABELS.get(target, target)} "
        f"({n_target} layers), two tokenizers, {aligned} tokens aligned by character offset:",
        "   best source layer per target layer: " + " ".join(f"{b}->{j}" for j, b in enumerate(best)),
        f"   correlation of relative depths (best source, target): {correlation:.2f}",
        f"   held-out relative error of the best map per target layer: min {np.nanmin(errors):.3f}, "
        f"median {np.median(errors.min(0)):.3f}, max {np.max(errors.min(0)):.3f}",
    ]
    return "\n".join(lines), errors


def plot(figures: dict, out_dir: Path, label: str, stem: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    n = figures["n_layers"]
    layers = list(range(n))
    skip_matrix = np.full((n, n), np.nan)
    for s, a, v in figures["skip"]:
        skip_matrix[s, a] = v
    maps = np.full((n, n), np.nan)
    for i, j, e in figures["maps"]:
        maps[i, j] = e
    sub = figures["sub"]
    written = []

    fig, axes = plt.subplots(2, 3, figsize=(17, 9))
    ax = axes[0, 0]
    for metric in ("attn_norm_ratio", "mlp_norm_ratio", "layer_norm_ratio"):
        ax.plot(layers, [sub[l, metric] for l in layers], marker="o", ms=3, label=metric)
    ax.set(title="Sublayer write / residual norm (mean over tokens)", xlabel="layer", yscale="log")
    ax.legend(fontsize=8)
    ax = axes[0, 1]
    for metric in ("cos_attn_resid", "cos_mlp_resid", "cos_layer_resid", "cos_next_resid"):
        ax.plot(layers, [sub[l, metric] for l in layers], marker="o", ms=3, label=metric)
    ax.axhline(0, color="grey", lw=0.5)
    ax.set(title="Cosine with the residual", xlabel="layer")
    ax.legend(fontsize=8)
    ax = axes[0, 2]
    im = ax.imshow(skip_matrix, cmap="viridis", origin="upper", vmin=0)
    ax.set(title="Skip layer s: relative change of later updates", xlabel="affected layer", ylabel="skipped layer")
    fig.colorbar(im, ax=ax)
    ax = axes[1, 0]
    out = figures["out"]
    ax.bar([l - 0.2 for l in out], [out[l][1] for l in out], width=0.4, label="KL at skipped positions")
    ax.bar([l + 0.2 for l in out], [out[l][0] for l in out], width=0.4, label="KL at later positions (>= t)")
    ax.set(title="Output change when a layer is skipped", xlabel="skipped layer", yscale="log")
    ax.legend(fontsize=8)
    ax = axes[1, 1]
    lens = figures["lens"]
    ax.plot(list(lens), [lens[l][0] for l in lens], marker="o", ms=3, color="C3")
    ax.set(title="Logit lens: KL to the final output", xlabel="layer", yscale="log")
    twin = ax.twinx()
    twin.plot(list(lens), [lens[l][1] for l in lens], marker="s", ms=3, color="C2")
    twin.set_ylabel("top-5 overlap", color="C2")
    ax = axes[1, 2]
    im = ax.imshow(maps, cmap="magma_r", origin="lower", extent=(1 / n, 1, 1 / n, 1), vmin=0)
    ax.set(title="Linear map error (source -> target)", xlabel="target relative depth", ylabel="source relative depth")
    fig.colorbar(im, ax=ax)
    fig.suptitle(f"{label} depth usage")
    fig.tight_layout()
    png = out_dir / f"{stem}.png"
    fig.savefig(png, dpi=110)
    written.append(png)

    page = make_subplots(
        rows=2,
        cols=3,
        subplot_titles=(
            "Sublayer write / residual norm",
            "Cosine with the residual",
            "Skip: relative change of later updates",
            "Output KL when a layer is skipped",
            "Logit lens KL to the final output",
            "Linear map error over relative depth",
        ),
    )
    for metric in ("attn_norm_ratio", "mlp_norm_ratio", "layer_norm_ratio"):
        page.add_trace(go.Scatter(x=layers, y=[sub[l, metric] for l in layers], name=metric), row=1, col=1)
    for metric in ("cos_attn_resid", "cos_mlp_resid", "cos_layer_resid", "cos_next_resid"):
        page.add_trace(go.Scatter(x=layers, y=[sub[l, metric] for l in layers], name=metric), row=1, col=2)
    page.add_trace(
        go.Heatmap(
            z=skip_matrix,
            x=layers,
            y=layers,
            colorscale="Viridis",
            colorbar=dict(x=1.0, y=0.8, len=0.4),
            hovertemplate="skip %{y} -> layer %{x}: %{z:.3f}<extra></extra>",
        ),
        row=1,
        col=3,
    )
    page.add_trace(go.Bar(x=list(out), y=[out[l][1] for l in out], name="KL at skipped positions"), row=2, col=1)
    page.add_trace(go.Bar(x=list(out), y=[out[l][0] for l in out], name="KL at later positions"), row=2, col=1)
    page.add_trace(go.Scatter(x=list(lens), y=[lens[l][0] for l in lens], name="logit lens KL"), row=2, col=2)
    depth = [(l + 1) / n for l in layers]
    page.add_trace(
        go.Heatmap(
            z=maps,
            x=depth,
            y=depth,
            colorscale="Magma",
            reversescale=True,
            showscale=False,
            hovertemplate="source %{y:.2f} -> target %{x:.2f}: %{z:.3f}<extra></extra>",
        ),
        row=2,
        col=3,
    )
    page.update_yaxes(type="log", row=1, col=1)
    page.update_yaxes(type="log", row=2, col=1)
    page.update_yaxes(type="log", row=2, col=2)
    page.update_layout(height=850, width=1500, title=f"{label} depth usage", barmode="group")
    html = out_dir / f"{stem}.html"
    page.write_html(html, include_plotlyjs=True)
    written.append(html)
    return written


def plot_cross_model(errors: np.ndarray, source: str, target: str, out_dir: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_source, n_target = errors.shape
    fig, ax = plt.subplots(figsize=(7, 6))
    im = ax.imshow(
        errors,
        cmap="magma_r",
        origin="lower",
        aspect="auto",
        extent=(0.5 / n_target, 1 + 0.5 / n_target, 0.5 / n_source, 1 + 0.5 / n_source),
    )
    best = errors.argmin(0)
    ax.plot((np.arange(n_target) + 1) / n_target, (best + 1) / n_source, "c.", label="best source layer")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.5)
    ax.set(
        title=f"Linear map error, {LABELS.get(source, source)} -> {LABELS.get(target, target)}",
        xlabel=f"{LABELS.get(target, target)} relative depth",
        ylabel=f"{LABELS.get(source, source)} relative depth",
    )
    ax.legend(fontsize=8)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    path = out_dir / "depth_usage_cross_model.png"
    fig.savefig(path, dpi=110)
    return path


def probe_model(model: str, store: str, tokens: int, additions: Path) -> tuple[str, str, str]:
    """(prose, addition, self-map) probe run names for one model."""
    short = model.split("/")[-1]
    prose = run_depth_probes(
        DepthProbeConfig(
            model=model,
            store=store,
            tokens=tokens,
            name=f"depth-usage-prose-{short}",
            task="prose",
            lens_tokens=2048,
            skip_tokens=1024,
        )
    ).probe_run.probe_run
    math = run_depth_probes(
        DepthProbeConfig(
            model=model,
            store=store,
            corpus=str(additions),
            tokens=4096,
            name=f"depth-usage-addition-{short}",
            task="addition",
            lens_tokens=1024,
            skip_tokens=1024,
        )
    ).probe_run.probe_run
    maps = run_linear_maps(
        LinearMapsConfig(source=model, target=model, store=store, tokens=4096, name=f"depth-usage-maps-{short}")
    ).probe_run.probe_run
    return prose, math, maps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", default="store")
    parser.add_argument(
        "--tokens", type=int, default=8192, help="prose tokens for the sublayer probe (default: %(default)s)"
    )
    parser.add_argument(
        "--models", default=",".join(MODELS), help="models to compare, comma-separated (default: %(default)s)"
    )
    parser.add_argument("--out", default="analyses/output/depth_usage")
    parser.add_argument(
        "--from-store", action="store_true", help="summarise and plot the probe runs already in the store; run nothing"
    )
    args = parser.parse_args()
    models = [m for m in args.models.split(",") if m]
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    additions = out_dir / "additions.txt"
    write_addition_corpus(additions)

    sections, written = [], []
    for model in models:
        short = model.split("/")[-1]
        if args.from_store:
            prose, math, maps = (f"depth-usage-{kind}-{short}" for kind in ("prose", "addition", "maps"))
        else:
            prose, math, maps = probe_model(model, args.store, args.tokens, additions)
        label = LABELS.get(model, model)
        text, figures = summarize(Store.open_existing(args.store), label, prose, math, maps)
        sections.append(text)
        written += plot(figures, out_dir, label, f"depth_usage_{model.split('/')[-1]}")
    if len(models) >= 2:
        source, target = models[0], models[1]
        maps = "depth-usage-cross-maps"
        if not args.from_store:
            run_linear_maps(LinearMapsConfig(source=source, target=target, store=args.store, tokens=4096, name=maps))
        text, errors = cross_model_summary(Store.open_existing(args.store), maps, source, target)
        sections.append(text)
        written.append(plot_cross_model(errors, source, target, out_dir))
    text = "\n\n".join(sections)
    print("\n" + text)
    (out_dir / "summary.txt").write_text(text + "\n")
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
