"""Head patching against the discrete-code method on the same task, side by side in one run.

    python bench/circuits.py [--model smollm2-135m] [--task ioi] [--pairs 16]

Both use one loaded model and the same prompt pairs. Patching patches every head of every
layer (one forward pass per layer, the heads batched); the code method runs each prompt
once, trains its small dictionary and scores heads. Model loading is excluded from both.
O'Neill & Bui report hours of patching against seconds of codes on GPT-2; this prints ours,
with the codes' ROC AUC against the patching result it was timed beside.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harvest import hardware  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--task", default="ioi")
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--models-dir", default=str(Path(__file__).resolve().parent.parent / "store" / "models"))
    parser.add_argument(
        "--threshold", type=float, default=0.1, help="|patching score| that puts a head in the reference"
    )
    args = parser.parse_args()

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
    print(f"hardware: {hardware()}")
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
        codes = find_circuit_from_codes(backend, prompts)
        codes_s = time.perf_counter() - start
        top_codes = np.argsort(-codes.head_scores, axis=None, kind="stable")[:5]
        print(
            f"discrete codes ({factor * args.pairs} pairs): {codes_s:7.1f}s  top {', '.join(name(i) for i in top_codes)}  "
            f"ROC AUC {roc_auc(codes.head_scores, in_circuit):.3f}; patching / codes: {patch_s / codes_s:.0f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
