"""Shared by analyses/greater_than.py and analyses/ioi_codes.py: run the circuit methods on one task,
store them, print a comparison table and save the plots.

The methods: activation patching (the reference: heads, and the residual stream by layer and
position) and circuit finding from discrete codes, scored against it. The third method,
attribution graphs, explains one prompt through transcoders rather than scoring heads over a
task; with transcoders in the store, `--transcoders NAMES` adds the graph of the first clean
prompt and its strongest paths.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the CLI does; see workbench/cli/__init__.py

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from workbench.circuits.codes import CodesConfig, run_codes  # noqa: E402
from workbench.circuits.patching import PatchingConfig, run_patching  # noqa: E402

OUTPUT = Path(__file__).resolve().parent / "output"


def _grid(scores, level: str, rows: str, columns: str) -> np.ndarray:
    chosen = [s for s in scores if s.level == level]
    grid = np.zeros((max(getattr(s, rows) for s in chosen) + 1, max(getattr(s, columns) for s in chosen) + 1))
    for s in chosen:
        grid[getattr(s, rows), getattr(s, columns)] = s.score
    return grid


def main(task: str, description: str) -> int:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", default="store/")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--pairs", type=int, default=16, help="prompt pairs (default: %(default)s)")
    parser.add_argument(
        "--threshold",
        type=float,
        default=0.1,
        help="|patching score| that puts a head in the reference circuit (default: %(default)s)",
    )
    parser.add_argument(
        "--transcoders",
        help="comma-separated transcoder names in the store: also build the "
        "attribution graph of the first clean prompt",
    )
    args = parser.parse_args()

    patching = run_patching(
        PatchingConfig(
            task=task,
            model=args.model,
            store=args.store,
            levels=["heads", "layers"],
            pairs=args.pairs,
            name=f"{task}-patching",
        )
    )
    patch_name, results = patching.circuit_run.circuit_run, patching.levels
    codes = run_codes(
        CodesConfig(
            task=task,
            store=args.store,
            reference=patch_name,
            pairs=args.pairs,
            reference_threshold=args.threshold,
            name=f"{task}-codes",
        )
    )
    heads = _grid(results["heads"].scores, "heads", "layer", "head")
    layers = _grid(results["layers"].scores, "layers", "layer", "position")
    n_heads = heads.shape[1]
    in_circuit = np.abs(heads) >= args.threshold
    name = lambda i: f"L{i // n_heads}H{i % n_heads}"  # noqa: E731
    first = results["heads"]
    print(
        f"\n{task} on {args.model}: {args.pairs} pairs; metric clean {first.metric_clean:.3f}, "
        f"corrupted {first.metric_corrupted:.3f}"
    )
    print(f"{'method':22s} {'time':>8s}  {'top heads':44s} {'ROC AUC vs patching':>20s}")
    top_patch = np.argsort(-np.abs(heads), axis=None)[:5]
    print(f"{'head patching':22s} {'':>8s}  {', '.join(name(i) for i in top_patch):44s} {'(reference)':>20s}")
    top_codes = np.argsort(-codes.scores.head_scores, axis=None, kind="stable")[:5]
    print(
        f"{'discrete codes':22s} {codes.scores.wall_s:7.1f}s  {', '.join(name(i) for i in top_codes):44s} "
        f"{codes.circuit_run.roc_auc_heads:20.3f}"
    )
    if args.transcoders:
        from workbench.circuits.attribution import GraphConfig, run_graph
        from workbench.circuits.graph import greedy_paths

        prompts = patching.circuit_run.prompts
        pair = prompts["pairs"][0]
        answer, wrong = pair["answers"][0], pair["wrong"][0]
        built = run_graph(
            GraphConfig(
                prompt=pair["clean"],
                store=args.store,
                target=[answer],
                wrong=wrong,
                transcoders=args.transcoders.split(","),
                name=f"{task}-graph",
            )
        )
        record, graph = built.graph, built.attribution
        print(
            f"{'attribution graph':22s} {'':>8s}  replacement {record.replacement_score:.3f}, completeness "
            f"{record.completeness_score:.3f}, faithfulness {record.faithfulness} for logit({answer!r}) - "
            f"logit({wrong!r}) (stored as '{record.graph}')"
        )
        for strength, path in greedy_paths(graph, 3):
            print(f"{'':33s}{strength:.3f}  " + " -> ".join(graph.nodes[i].node_id for i in path))
    else:
        print(f"{'attribution graph':22s} {'-':>8s}  {'give --transcoders to add one':44s} {'-':>20s}")
    print(
        f"patching (heads and layers) took {codes.reference_wall_s:.1f}s; "
        f"{int(in_circuit.sum())} heads reach |score| >= {args.threshold}"
    )

    OUTPUT.mkdir(exist_ok=True)
    figure, axes = plt.subplots(1, 3, figsize=(16, 5))
    bound = max(1.0, np.abs(heads).max())
    image = axes[0].imshow(heads, cmap="RdBu_r", vmin=-bound, vmax=bound, origin="lower", aspect="auto")
    axes[0].set(title="Head patching score", xlabel="head", ylabel="layer")
    figure.colorbar(image, ax=axes[0])
    image = axes[1].imshow(codes.scores.head_scores, cmap="Reds", origin="lower", aspect="auto")
    axes[1].set(
        title=f"Codes unique to positives (AUC {codes.circuit_run.roc_auc_heads:.2f})", xlabel="head", ylabel="layer"
    )
    figure.colorbar(image, ax=axes[1])
    bound = max(1.0, np.abs(layers).max())
    image = axes[2].imshow(layers, cmap="RdBu_r", vmin=-bound, vmax=bound, origin="lower", aspect="auto")
    axes[2].set(title="Residual stream patching by position", xlabel="position", ylabel="layer")
    figure.colorbar(image, ax=axes[2])
    figure.tight_layout()
    path = OUTPUT / f"{task}_circuits.png"
    figure.savefig(path, dpi=110)
    print(f"plots: {path}; the app's Circuits page shows the same runs: workbench app --store {args.store}")
    return 0
