"""Circuit methods side by side in one run: head patching, discrete codes and attribution graphs.

    python bench/circuits.py [--model smollm2-135m] [--task ioi] [--pairs 16] [--part codes|graphs|all]

codes:  patching patches every head of every layer on the task's pairs (one forward pass per layer, the heads
        batched); the code method runs each prompt once, trains its small dictionary and scores heads. Model
        loading is excluded from both. Prints the codes' ROC AUC against the patching result it was timed beside.
graphs: an attribution graph of one 16-token prompt (BOS + 15) through a transcoder set covering all 30 layers,
        and through a cross-layer transcoder over all 30 layers, beside head patching of that prompt's pair.
        Each is timed in a fresh process, which reports its peak resident memory. The dictionaries have random
        weights of the shapes a real set would have (TopK transcoders, 4,608 latents, k active per position; a
        CLT of 1,024 latents per layer, k per layer): the time depends on the shapes and the number of active
        features, not on what they mean.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harvest import hardware  # noqa: E402

MODELS_DIR = Path(__file__).resolve().parent.parent / "store" / "models"
# A 16-token prompt in SmolLM2's tokenizer: BOS + 15 tokens (checked below).
GRAPH_PROMPT = "When Mary and John went to the big store, John gave a drink to"


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def codes(args) -> None:
    from workbench.circuits.codes import find_circuit_from_codes, roc_auc
    from workbench.circuits.patching import patch_task
    from workbench.circuits.tasks import load_task, tokenize_task
    from workbench.models import load_hf_model, make_backend, resolve_model_dir
    from workbench.models.families import attention_heads

    hf_model, tokenizer = load_hf_model(resolve_model_dir(args.model, Path(args.models_dir)))
    backend = make_backend("nnsight", hf_model, tokenizer)
    task = tokenize_task(load_task(args.task, tokenizer, args.pairs), tokenizer)
    n_heads, _ = attention_heads(hf_model)

    start = time.perf_counter()
    patched = patch_task(backend, task, "heads", progress=False)
    patch_s = time.perf_counter() - start
    reference = np.zeros((backend.n_layers, n_heads))
    for score in patched.scores:
        reference[score.layer, score.head] = score.score

    in_circuit = np.abs(reference) >= args.threshold
    name = lambda i: f"L{i // n_heads}H{i % n_heads}"  # noqa: E731
    top_patch = np.argsort(-np.abs(reference), axis=None)[:5]
    print(
        f"task: {args.task}, {args.pairs} pairs of {task.seq_len} tokens; model {args.model} "
        f"({backend.n_layers} layers x {n_heads} heads)"
    )
    print(
        f"head patching ({args.pairs} pairs): {patch_s:7.1f}s  top {', '.join(name(i) for i in top_patch)}  "
        f"({int(in_circuit.sum())} heads with |score| >= {args.threshold})"
    )
    # The code method gets sharper with more prompts (more chances for a code unique to positives), at
    # one forward pass each: it is run on the same pairs as patching, and on 2x and 4x as many.
    for factor in (1, 2, 4):
        prompts = (
            task if factor == 1 else tokenize_task(load_task(args.task, tokenizer, factor * args.pairs), tokenizer)
        )
        start = time.perf_counter()
        found = find_circuit_from_codes(backend, prompts)
        codes_s = time.perf_counter() - start
        top_codes = np.argsort(-found.head_scores, axis=None, kind="stable")[:5]
        print(
            f"discrete codes ({factor * args.pairs} pairs): {codes_s:7.1f}s  top {', '.join(name(i) for i in top_codes)}  "
            f"ROC AUC {roc_auc(found.head_scores, in_circuit):.3f}; patching / codes: {patch_s / codes_s:.0f}x"
        )


def _one_graph(args) -> dict:
    """Runs in its own process (--child): one measurement and its peak memory, as JSON on the last line."""
    import torch

    from workbench.circuits.attribute import Targets, build_graph
    from workbench.circuits.graph import prune, scores
    from workbench.circuits.replacement import CLTReplacement, TranscoderSet
    from workbench.dictionaries import DictionaryConfig, make_dictionary
    from workbench.dictionaries.clt import clt_config
    from workbench.models import load_hf_model, resolve_model_dir

    hf_model, tokenizer = load_hf_model(resolve_model_dir(args.model, Path(args.models_dir)))
    n_layers, d = hf_model.config.num_hidden_layers, hf_model.config.hidden_size
    n_tokens = 1 + len(tokenizer(GRAPH_PROMPT, add_special_tokens=False)["input_ids"])
    if args.model == "smollm2-135m":
        assert n_tokens == 16, n_tokens
    baseline = _peak_mib()
    torch.manual_seed(0)
    if args.child == "patching":
        from workbench.circuits.patching import patch_task
        from workbench.circuits.tasks import load_task, tokenize_task
        from workbench.models import make_backend

        backend = make_backend("nnsight", hf_model, tokenizer)
        task = tokenize_task(load_task("ioi", tokenizer, 1), tokenizer)
        started = time.perf_counter()
        patch_task(backend, task, "heads", progress=False)
        return {"what": "head patching, 1 IOI pair", "s": time.perf_counter() - started, "tokens": task.seq_len,
                "peak_mib": _peak_mib(), "baseline_mib": baseline}  # fmt: skip
    if args.child == "transcoders":
        config = DictionaryConfig(arch="topk", d_in=d, n_latents=4608, k=args.k, transcoder=True)
        replacement = TranscoderSet({layer: make_dictionary(config).eval() for layer in range(n_layers)})
        what = f"attribution graph, {n_layers} transcoders (4,608 latents, k {args.k})"
    else:
        clt = make_dictionary(clt_config(list(range(n_layers)), d, 1024, args.k)).eval()
        # Thresholds that let about k of each layer's 1,024 features fire per position on this prompt.
        inputs: dict[int, torch.Tensor] = {}
        hooks = [block.mlp.register_forward_hook(lambda m, i, o, layer=layer: inputs.__setitem__(layer, i[0][0]))
                 for layer, block in enumerate(hf_model.model.layers)]  # fmt: skip
        ids = tokenizer(GRAPH_PROMPT, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            hf_model(ids)
            for hook in hooks:
                hook.remove()
            for layer in range(n_layers):
                pre = clt.layer_pre_activations(layer, inputs[layer].float())
                clt.threshold[layer] = pre.flatten().quantile(1 - args.k / 1024)
        replacement = CLTReplacement(clt)
        what = f"attribution graph, CLT over {n_layers} layers (1,024 latents per layer)"
    started = time.perf_counter()
    graph = build_graph(hf_model, tokenizer, GRAPH_PROMPT, replacement, Targets(), max_features=10**6)
    built = time.perf_counter() - started
    pruned = prune(graph)
    replacement_score, completeness = scores(graph)
    total = time.perf_counter() - started
    features = int((graph.kinds == "feature").sum())
    return {"what": what, "s": total, "build_s": built, "tokens": n_tokens, "features": features,
            "nodes": len(graph.nodes), "kept_nodes": pruned.n_nodes, "kept_edges": pruned.n_edges,
            "targets": len(graph.targets), "replacement": replacement_score, "completeness": completeness,
            "peak_mib": _peak_mib(), "baseline_mib": baseline}  # fmt: skip


def graphs(args) -> None:
    results = []
    for child in ("patching", "transcoders", "clt"):
        command = [sys.executable, __file__, "--child", child, "--model", args.model, "--models-dir",
                   args.models_dir, "--k", str(args.k)]  # fmt: skip
        output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        results.append(json.loads(output.strip().splitlines()[-1]))
    patching = results[0]
    print(f"prompt: {GRAPH_PROMPT!r} ({results[1]['tokens']} tokens with BOS); model {args.model}")
    print(f"{patching['what']}: {patching['s']:.1f}s over {patching['tokens']} tokens, "
          f"peak {patching['peak_mib']:.0f} MiB (model loaded: {patching['baseline_mib']:.0f} MiB)")  # fmt: skip
    for result in results[1:]:
        print(
            f"{result['what']}: {result['s']:.1f}s (edges {result['build_s']:.1f}s, pruning and scores the rest); "
            f"{result['features']} active features, {result['nodes']} nodes, {result['targets']} targets, pruned "
            f"to {result['kept_nodes']} nodes / {result['kept_edges']} edges; peak {result['peak_mib']:.0f} MiB "
            f"(model loaded: {result['baseline_mib']:.0f} MiB); graph / patching of the pair: "
            f"{result['s'] / patching['s']:.2f}x"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--task", default="ioi")
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--part", choices=["codes", "graphs", "all"], default="all")
    parser.add_argument("--k", type=int, default=16, help="graphs: active features per position and layer")
    parser.add_argument("--models-dir", default=str(MODELS_DIR))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument(
        "--threshold", type=float, default=0.1, help="|patching score| that puts a head in the reference"
    )
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_one_graph(args)))
        return 0
    print(f"hardware: {hardware()}")
    if args.part in ("codes", "all"):
        codes(args)
    if args.part in ("graphs", "all"):
        graphs(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
