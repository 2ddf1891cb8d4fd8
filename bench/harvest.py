"""Harvest throughput against a bare forward pass stopped at the same layer, on the same batches.

    python bench/harvest.py                      # SmolLM2-135M, 3 hooks at layer 6, 16k tokens, both backends
    python bench/harvest.py --model tiny --tokens 8192

Bare = the plain HF forward (no hooking library), stopped after the deepest hook's block.
Harvest = workbench.harvest.run_harvest into a fresh store: backend capture, Parquet shard
writes with checksums, and one catalog commit per chunk. Model loading and tokenization,
paid once per run, are reported separately. Shared machines are noisy, so bare and
harvest passes alternate (B H B H B H B) and each harvest is compared with the mean of
the bare passes on either side of it; the median of those ratios is the figure.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the `workbench` CLI does; see workbench/cli/__init__.py
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from workbench.corpus import tokenize_corpus
from workbench.harvest import HarvestConfig, run_harvest
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
        bare_forward(hf_model, torch.from_numpy(contexts[i : i + batch_size]).long(), stop_layer)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--hooks", default="blocks.6.hook_out,blocks.6.mlp.hook_in,blocks.6.mlp.hook_out")
    parser.add_argument("--tokens", type=int, default=24576, help="tokens per pass (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="harvest passes per backend (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--backend", choices=["transformerlens", "nnsight", "both"], default="both")
    parser.add_argument("--store-dtype", default="float32", help="shard precision (default: %(default)s)")
    parser.add_argument(
        "--models-dir", default="store/models", help="where registry models are built (default: %(default)s)"
    )
    args = parser.parse_args()

    model_dir = resolve_model_dir(args.model, Path(args.models_dir))
    n_layers, _ = model_shape(model_dir)
    hooks = parse_hooks(args.hooks, n_layers)
    stop_layer = max(h.layer for h in hooks)
    hf_model, tokenizer = load_hf_model(model_dir)
    contexts = tokenize_corpus("default", tokenizer, args.tokens).contexts()
    n_tokens = contexts.size
    time_bare(hf_model, contexts[: args.batch_size], args.batch_size, stop_layer)  # warm-up

    print(f"hardware: {hardware()}; OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}")
    print(
        f"model {args.model}, hooks {args.hooks}, stopped after block {stop_layer} of {n_layers}; "
        f"{n_tokens} tokens in batches of {args.batch_size}x{contexts.shape[1]}"
    )
    backends = ["transformerlens", "nnsight"] if args.backend == "both" else [args.backend]
    for backend in backends:
        bare_times, harvest_times, setup_times = [time_bare(hf_model, contexts, args.batch_size, stop_layer)], [], []
        for _ in range(args.repeats):
            root = Path(tempfile.mkdtemp(prefix="bench-harvest-"))
            try:
                os.symlink(Path(args.models_dir).resolve(), root / "models")
                wall = time.perf_counter()
                result = run_harvest(
                    HarvestConfig(
                        model=args.model,
                        hooks=args.hooks.split(","),
                        store=str(root),
                        tokens=args.tokens,
                        backend=backend,
                        batch_size=args.batch_size,
                        store_dtype=args.store_dtype,
                    ),
                    progress=False,
                )
                setup_times.append(time.perf_counter() - wall - result.seconds_harvesting)
                harvest_times.append(result.seconds_harvesting)
                summary = summarize(Store.open_existing(root))
            finally:
                shutil.rmtree(root, ignore_errors=True)
            bare_times.append(time_bare(hf_model, contexts, args.batch_size, stop_layer))
        ratios = [h / ((bare_times[i] + bare_times[i + 1]) / 2) for i, h in enumerate(harvest_times)]
        ratio = statistics.median(ratios)
        bare, loop = statistics.median(bare_times), statistics.median(harvest_times)
        print(f"\n[{backend}]  ({args.repeats} harvest passes, {len(bare_times)} bare passes, alternating)")
        print(
            f"  bare forward      {n_tokens / bare:8.0f} tok/s   (median {bare:.2f}s; range {min(bare_times):.2f}-{max(bare_times):.2f}s)"
        )
        print(f"  harvest           {n_tokens / loop:8.0f} tok/s   (median {loop:.2f}s; capture + shards + commits)")
        print(
            f"  harvest/bare time {ratio:8.3f}x   (overhead {100 * (ratio - 1):+.1f}%; per pass "
            f"{', '.join(f'{r:.3f}' for r in ratios)}; target <= 1.10x)"
        )
        print(f"  one-time setup    {statistics.median(setup_times):8.2f}s    (model load, tokenize, run creation)")
        for row in summary["hook_points"].to_pylist():
            print(
                f"  {row['hook']:24s} {row['bytes_per_token']:7.1f} bytes/token stored vs {row['raw_fp32_bytes_per_token']} raw fp32 "
                f"({row['ratio_to_fp32']:.3f}x)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
