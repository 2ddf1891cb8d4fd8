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
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the CLI does; see workbench/cli/__init__.py


def per_layer_fvu(store, args, per_layer, clt) -> None:
    """FVU of each layer's MLP output on held-out corpus tokens (the corpus's end), the per-layer set against the CLT,
    and the average L0 of each: the comparison at equal total L0 the README reports."""
    import torch

    from workbench.corpus import tokenize_corpus
    from workbench.hooks import HookPoint
    from workbench.models import load_hf_model, make_backend, resolve_model_dir

    hf_model, tokenizer = load_hf_model(resolve_model_dir(args.model, store.root / "models"))
    backend = make_backend("nnsight", hf_model, tokenizer)
    corpus = tokenize_corpus(args.fvu_corpus, tokenizer, args.fvu_tokens)
    contexts = corpus.vocab_ids.reshape(-1, corpus.context_len).astype("int64")
    n_layers = len(per_layer.names)
    points = [HookPoint(layer, kind) for layer in range(n_layers) for kind in ("mlp.hook_in", "mlp.hook_out")]
    sums = {key: torch.zeros(n_layers, 3) for key in ("set", "clt")}  # squared error, variance, L0
    with torch.no_grad():
        for start in range(0, len(contexts), 8):
            acts = backend.capture(torch.from_numpy(contexts[start : start + 8]), points)
            ins = [acts[HookPoint(l, "mlp.hook_in")][:, 1:].reshape(-1, hf_model.config.hidden_size).float()
                   for l in range(n_layers)]  # fmt: skip
            outs = [acts[HookPoint(l, "mlp.hook_out")][:, 1:].reshape(-1, hf_model.config.hidden_size).float()
                    for l in range(n_layers)]  # fmt: skip
            clt_features = {l: clt.replacement.encode(l, ins[l]) for l in range(n_layers)}
            for layer in range(n_layers):
                variance = (outs[layer] - outs[layer].mean(0)).pow(2).sum()
                coder = per_layer.replacement.coders[layer]
                codes = coder.encode(ins[layer])
                set_error = (coder.decode(codes, ins[layer]) - outs[layer]).pow(2).sum()
                clt_error = (clt.replacement.decode_into(layer, clt_features, ins[layer]) - outs[layer]).pow(2).sum()
                rows = len(ins[layer])
                sums["set"][layer] += torch.tensor([set_error, variance, (codes > 0).sum() / rows])
                sums["clt"][layer] += torch.tensor([clt_error, variance, (clt_features[layer] > 0).sum() / rows])
    batches = -(-len(contexts) // 8)
    print(f"held-out FVU of each layer's MLP output ({len(contexts) * (corpus.context_len - 1)} tokens of "
          f"{Path(args.fvu_corpus).name}), per-layer set against CLT:")  # fmt: skip
    print(f"{'layer':>5s} {'set FVU':>8s} {'CLT FVU':>8s} {'set L0':>7s} {'CLT L0':>7s}")
    for layer in range(n_layers):
        a, b = sums["set"][layer], sums["clt"][layer]
        print(f"{layer:5d} {a[0] / a[1]:8.3f} {b[0] / b[1]:8.3f} {a[2] / batches:7.1f} {b[2] / batches:7.1f}")
    total = {key: (value[:, 0] / value[:, 1]).mean().item() for key, value in sums.items()}
    l0 = {key: (value[:, 2] / batches).sum().item() for key, value in sums.items()}
    print(
        f"mean FVU: set {total['set']:.3f}, CLT {total['clt']:.3f}; total L0 per token: set {l0['set']:.0f}, "
        f"CLT {l0['clt']:.0f}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", default="store/")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--transcoders", default=None, help="name prefix of the per-layer set (default: all)")
    parser.add_argument("--clt", default=None, help="a cross-layer transcoder over every layer, to compare")
    parser.add_argument("--counts", default="1,10,20,30", help="numbers of replaced layers, from layer 0")
    parser.add_argument("--tasks", default="ioi,greater-than")
    parser.add_argument("--fvu-tokens", type=int, default=4096, help="held-out tokens for the per-layer FVU table")
    parser.add_argument("--fvu-corpus", default=str(Path(__file__).resolve().parent.parent / "README.md"),
                        help="text the dictionaries did not see (default: this project's README)")  # fmt: skip
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
    if args.clt and args.fvu_tokens:
        per_layer_fvu(store, args, loaded, load_transcoders(store, [args.clt]))
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
