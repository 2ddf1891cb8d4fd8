"""How much of SmolLM2's computation do attribution graphs explain, against the number of MLP layers replaced?

    python analyses/circuit_scores.py --store store/ [--transcoders PREFIX] [--clt NAME] [--counts 1,10,20,30]

For IOI and greater-than (the first clean prompt of each task, the target the logit difference of its first
answer against its first wrong continuation), builds the attribution graph with the transcoders of the first N
layers replaced (N from --counts), and with the cross-layer transcoder over every layer if --clt is given, and
prints the replacement and completeness scores, the graph's size after pruning and its faithfulness (the
correlation of predicted with actual target changes when its most influential features are ablated).

The transcoders are a store's per-layer set of SmolLM2 (`--transcoders PREFIX` picks PREFIX-L0 ... PREFIX-L29, as
`workbench train --name PREFIX` names a grouped run; default: `--transcoders all`, the store's only set). The README
gives the commands that train them and the figures this printed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the CLI does; see workbench/cli/__init__.py


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", default="store/")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--transcoders", default=None, help="name prefix of the per-layer set (default: all)")
    parser.add_argument("--clt", default=None, help="a cross-layer transcoder over every layer, to compare")
    parser.add_argument("--counts", default="1,10,20,30", help="numbers of replaced layers, from layer 0")
    parser.add_argument("--tasks", default="ioi,greater-than")
    args = parser.parse_args()

    from workbench.circuits.attribution import ALL, GraphConfig, load_transcoders, run_graph
    from workbench.circuits.tasks import load_task
    from workbench.models import load_hf_model, resolve_model_dir
    from workbench.store import Store

    store = Store.open_existing(args.store)
    _, tokenizer = load_hf_model(resolve_model_dir(args.model, store.root / "models"))
    if args.transcoders:
        loaded = load_transcoders(store, [f"{args.transcoders}-L{layer}" for layer in range(30)])
    else:
        loaded = load_transcoders(store, [ALL], args.model)
    names = loaded.names
    print(f"{'task':13s} {'replaced':>9s} {'replacement':>12s} {'completeness':>13s} {'features':>9s} "
          f"{'kept nodes':>11s} {'kept edges':>11s} {'faithful':>9s} {'time':>7s}")  # fmt: skip
    for task_name in args.tasks.split(","):
        pair = load_task(task_name, tokenizer, 1).pairs[0]
        runs = [
            (f"{count} layers", [names[layer] for layer in range(count)]) for count in map(int, args.counts.split(","))
        ]
        if args.clt:
            runs.append(("CLT (all)", [args.clt]))
        for label, transcoders in runs:
            started = time.perf_counter()
            config = GraphConfig(pair.clean, transcoders, str(store.root), target=[pair.answers[0]],
                                 wrong=pair.wrong[0], name=f"scores-{task_name}-{label.split()[0]}",
                                 max_features=20_000)  # fmt: skip
            result = run_graph(config)
            record, graph = result.graph, result.attribution
            n_features = int((graph.kinds == "feature").sum())
            faithful = "-" if record.faithfulness is None else f"{record.faithfulness:.3f}"
            print(f"{task_name:13s} {label:>9s} {record.replacement_score:12.3f} {record.completeness_score:13.3f} "
                  f"{n_features:9d} {record.n_kept_nodes:11d} {record.n_kept_edges:11d} {faithful:>9s} "
                  f"{time.perf_counter() - started:6.1f}s")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
