"""Shard precision: bytes, and read speed for training and for SQL, float32 against bfloat16 and float16.

    python bench/shards.py                          # random:smollm2-135m layer 6, 65,536 tokens
    python bench/shards.py --model smollm2-135m --tokens 131072

Harvests the same contexts three times into one store, once per --store-dtype, then reads each run back
side by side in one process, alternating, several times:
- training reads: one epoch of `ActivationBatches` (checksums, decoding, BOS removal, shuffling) with the
  prefetching turned off, so that the figure is the decoding itself;
- SQL: `SELECT sum(list_sum(act))` over the run through the `activations` view (DuckDB decodes every value).
Prints the absolute numbers, the hardware, and the ratios to float32.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the `workbench` CLI does
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from workbench.activation_batches import ActivationBatches
from workbench.harvest import HarvestConfig, run_harvest
from workbench.store import Store

sys.path.insert(0, str(Path(__file__).parent))
from harvest import hardware  # noqa: E402

DTYPES = ("float32", "bfloat16", "float16")


def read_for_training(store: Store, run: str, hook: str) -> float:
    data = ActivationBatches(store, run, [hook], batch_size=4096, seed=0, prefetch=False)
    stream = data.iterate(0)
    start = time.perf_counter()
    for _ in range(data.batches_per_epoch()):
        next(stream)
    return time.perf_counter() - start


def read_with_sql(store: Store, run: str, hook: str) -> float:
    start = time.perf_counter()
    with store.reader() as con:
        con.execute("SELECT sum(list_sum(act)) FROM activations WHERE run = ? AND hook = ?", [run, hook]).fetchone()
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="random:smollm2-135m")
    parser.add_argument("--hook", default="blocks.6.hook_out")
    parser.add_argument("--tokens", type=int, default=65_536)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models-dir", default="store/models")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-shards-"))
    rows = {}
    try:
        (root / "models").symlink_to(Path(args.models_dir).resolve(), target_is_directory=True)
        for dtype in DTYPES:
            result = run_harvest(
                HarvestConfig(
                    model=args.model,
                    hooks=[args.hook],
                    store=str(root),
                    tokens=args.tokens,
                    run=dtype,
                    store_dtype=dtype,
                ),
                progress=False,
            )
            rows[dtype] = {"harvest_s": result.seconds_harvesting, "train": [], "sql": []}
        store = Store.open_existing(root)
        for _ in range(args.repeats):  # alternating, so that drift favours no precision
            for dtype in DTYPES:
                rows[dtype]["train"].append(read_for_training(store, dtype, args.hook))
                rows[dtype]["sql"].append(read_with_sql(store, dtype, args.hook))
        for dtype in DTYPES:
            rows[dtype]["bytes"] = sum(s.n_bytes for s in store.shards(dtype, args.hook))
            rows[dtype]["n_tokens"] = sum(s.n_rows for s in store.shards(dtype, args.hook))
    finally:
        shutil.rmtree(root, ignore_errors=True)

    print(f"date: {time.strftime('%Y-%m-%d')}; {hardware()}")
    print(f"model: {args.model}, {args.hook}; {rows['float32']['n_tokens']:,} tokens per run; median of {args.repeats}")
    print(
        f"{'store dtype':12s} {'MiB':>7s} {'bytes':>6s} {'train read':>15s} {'ratio':>6s} {'SQL scan':>15s} {'ratio':>6s}"
    )
    base = rows["float32"]
    for dtype in DTYPES:
        row = rows[dtype]
        train, sql = statistics.median(row["train"]), statistics.median(row["sql"])
        n = row["n_tokens"]
        print(
            f"{dtype:12s} {row['bytes'] / 2**20:7.1f} {row['bytes'] / base['bytes']:5.2f}x "
            f"{n / train:10,.0f} tok/s {statistics.median(base['train']) / train:5.2f}x "
            f"{n / sql:10,.0f} tok/s {statistics.median(base['sql']) / sql:5.2f}x"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
