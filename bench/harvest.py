"""Harvest throughput against a bare forward pass stopped at the same layer, on the same batches.

    python bench/harvest.py                      # SmolLM2-135M, 3 hooks at layer 6, 16k tokens, both backends
    python bench/harvest.py --model tiny --tokens 8192

Bare = the plain HF forward (no hooking library), stopped after the deepest hook's block.
Harvest = workbench.harvest.harvest into a fresh store: backend capture, Parquet shard
writes with checksums, and one catalog commit per chunk. Model loading and tokenization,
paid once per run, are reported separately. The bare pass runs before and after the
harvest and is averaged, so slow drift of the machine does not favour either side.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from workbench.corpus import tokenize_corpus
from workbench.harvest import HarvestConfig, harvest
from workbench.hooks import parse_hooks
from workbench.models import bare_forward, load_hf_model, model_shape, resolve_model_dir
from workbench.store import Store
from workbench.store.maintenance import summarize


def hardware() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}; {os.cpu_count()} cores; torch {torch.__version__} with {torch.get_num_threads()} threads"


def time_bare(hf_model, contexts, batch_size: int, stop_layer: int) -> float:
    start = time.perf_counter()
    for i in range(0, len(contexts), batch_size):
        bare_forward(hf_model, torch.from_numpy(contexts[i:i + batch_size]).long(), stop_layer)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--hooks", default="blocks.6.hook_out,blocks.6.mlp.hook_in,blocks.6.mlp.hook_out")
    parser.add_argument("--tokens", type=int, default=32768)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--backend", choices=["transformerlens", "nnsight", "both"], default="both")
    parser.add_argument("--models-dir", default="store/models", help="where registry models are built (default: %(default)s)")
    args = parser.parse_args()

    model_dir = resolve_model_dir(args.model, Path(args.models_dir))
    n_layers, _ = model_shape(model_dir)
    hooks = parse_hooks(args.hooks, n_layers)
    stop_layer = max(h.layer for h in hooks)
    hf_model, tokenizer = load_hf_model(model_dir)
    contexts = tokenize_corpus("default", tokenizer, args.tokens).contexts()
    n_tokens = contexts.size
    time_bare(hf_model, contexts[: args.batch_size], args.batch_size, stop_layer)  # warm-up

    print(f"hardware: {hardware()}")
    print(f"model {args.model}, hooks {args.hooks}, stopped after block {stop_layer} of {n_layers}; "
          f"{n_tokens} tokens in batches of {args.batch_size}x{contexts.shape[1]}")
    backends = ["transformerlens", "nnsight"] if args.backend == "both" else [args.backend]
    for backend in backends:
        bare_before = time_bare(hf_model, contexts, args.batch_size, stop_layer)
        root = Path(tempfile.mkdtemp(prefix="bench-harvest-"))
        try:
            os.symlink(Path(args.models_dir).resolve(), root / "models")
            wall = time.perf_counter()
            result = harvest(HarvestConfig(model=args.model, hooks=args.hooks.split(","), store=str(root),
                                           tokens=args.tokens, backend=backend, batch_size=args.batch_size),
                             progress=False)
            wall = time.perf_counter() - wall
            summary = summarize(Store.open_existing(root))
        finally:
            shutil.rmtree(root, ignore_errors=True)
        bare_after = time_bare(hf_model, contexts, args.batch_size, stop_layer)
        bare = (bare_before + bare_after) / 2
        loop = result.seconds_harvesting
        print(f"\n[{backend}]")
        print(f"  bare forward      {n_tokens / bare:8.0f} tok/s   ({bare_before:.2f}s before, {bare_after:.2f}s after)")
        print(f"  harvest           {n_tokens / loop:8.0f} tok/s   ({loop:.2f}s: capture + shards + commits)")
        print(f"  harvest/bare time {loop / bare:8.3f}x   (overhead {100 * (loop / bare - 1):+.1f}%; target <= +10%)")
        print(f"  one-time setup    {wall - loop:8.2f}s    (model load, tokenize, run creation)")
        for row in summary["hook_points"].to_pylist():
            print(f"  {row['hook']:24s} {row['bytes_per_token']:7.1f} bytes/token stored vs {row['raw_fp32_bytes_per_token']} raw fp32 "
                  f"({row['ratio_to_fp32']:.3f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
