"""Our dictionary families side by side on SmolLM2's layer-6 residual stream, with every metric and seed bands.

    python analyses/compare_dictionaries.py --store store/ [--run demo] [--families topk,batchtopk,...]
        [--seeds 2] [--tokens 400k] [--latents 2304] [--k 32] [--explain 10] [--out compare.html]

Each family is trained as the demo's dictionary is (same hook, width, k and token budget; `cmp-<family>`), with
--seeds - 1 seed siblings, then evaluated with `workbench eval --benchmarks all` (core metrics, absorption, sparse
probing) and, with --explain N, autointerp on N features of the first seed. Trained dictionaries are reused on a
re-run, and so are their evaluations once every seed has all three. Prints one row per metric and one column per family (mean ± std over seeds) and writes the bands as an
interactive plot. The README's "Evaluations" section reports what it printed, including where our families lose.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the CLI does; see workbench/cli/__init__.py

FAMILIES = ("topk", "batchtopk", "matryoshka", "mp", "mutualchoice", "featurechoice")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", required=True)
    parser.add_argument("--run", default="demo", help="a harvest run with blocks.6.hook_out (make demo's)")
    parser.add_argument("--hook", default="blocks.6.hook_out")
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--tokens", default="400k")
    parser.add_argument("--latents", type=int, default=2304)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--explain", type=int, default=0, help="features to explain per family (first seed)")
    parser.add_argument("--out", default="compare_dictionaries.html", help="the bands plot (HTML)")
    args = parser.parse_args()

    import pandas as pd
    import pyarrow as pa

    from workbench import plots
    from workbench.cli.common import print_table
    from workbench.cli.options import int_with_suffix
    from workbench.evals.autointerp import ExplainConfig, run_explain
    from workbench.evals.suite import EvalSuiteConfig, run_eval_suite
    from workbench.evals.table import band_rows, metric_rows, score_table
    from workbench.store import Store, lookups
    from workbench.train import TrainConfig, run_train

    store = Store.open_existing(args.store)
    names = []
    for family in args.families.split(","):
        name = f"cmp-{family}"
        started = time.perf_counter()
        existing = lookups.dictionary(store, name)
        if existing is None or existing.status != "complete":
            run_train(TrainConfig(store=args.store, hook=[args.hook], arch=family, k=[args.k], latents=[args.latents],
                                  tokens=int_with_suffix(args.tokens), batch_size=2048, run=args.run, name=name))  # fmt: skip
        done = score_table(store)
        row = next((r for r in done if r.dictionary == name), None)
        if (
            row is not None
            and len(row.members) == args.seeds
            and all(
                row.bands.get(key) is not None and row.bands[key].n == args.seeds
                for key in (("core", "fvu"), ("absorption", "absorption_rate"), ("sparse_probing", "top_1_accuracy"))
            )
        ):
            print(f"{name}: evaluated over {args.seeds} seeds already; kept")
            names.append(name)
            continue
        suite = EvalSuiteConfig(store=args.store, dictionary=name, run=args.run, ce_tokens=2048, seeds=args.seeds,
                                benchmarks=["core", "absorption", "sparse_probing"], device="cpu")  # fmt: skip
        run_eval_suite(suite)
        if args.explain:
            from workbench.encode import EncodeConfig, run_encode

            run_encode(EncodeConfig(store=args.store, dictionary=name), progress=False)
            run_explain(ExplainConfig(store=args.store, dictionary=name, n_features=args.explain, device="cpu"))
        names.append(name)
        print(f"{name}: trained and evaluated over {args.seeds} seeds in {time.perf_counter() - started:.0f} s")

    table = [row for row in score_table(store) if row.dictionary in names]
    print_table(pa.table(metric_rows(table)))
    plots.score_bands(pd.DataFrame(band_rows(table))).write_html(args.out)
    print(f"bands: {args.out}")


if __name__ == "__main__":
    main()
