"""How fast does SQL return a feature's top-20 activating contexts from 10M stored activations?

    python bench/feature_query.py [--rows 10000000]

Builds a store with synthetic `feature_acts` rows (16,384 features, Zipf-like densities,
sorted by feature as `workbench encode` writes them) over 1M tokens, then times, through
the same read-only sandboxed path that `workbench sql` and the app use (connection opening
included), for 20 random features:
  1. the top-20 activations joined to their tokens;
  2. the full 128-token contexts of those 20 activations.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from workbench.store import Store
from workbench.store.sql import run_query

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harvest import hardware  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--tokens", type=int, default=1_000_000)
    parser.add_argument("--features", type=int, default=16_384)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    root = Path(tempfile.mkdtemp(prefix="bench-features-"))
    try:
        store = Store.create_or_open(root)
        start = time.perf_counter()
        weights = 1 / np.arange(1, args.features + 1) ** 0.8
        features = np.sort(rng.choice(args.features, size=args.rows, p=weights / weights.sum())).astype(np.int32)
        values = rng.exponential(1.0, args.rows).astype(np.float32)
        order = np.lexsort((-values, features))
        acts = pa.table(
            {
                "dictionary": pa.array(["d"] * args.rows),
                "run": pa.array(["r"] * args.rows),
                "token_id": rng.integers(0, args.tokens, args.rows),
                "feature": features[order],
                "value": values[order],
            }
        )
        ids = np.arange(args.tokens)
        tokens = pa.table(
            {
                "run": pa.array(["r"] * args.tokens),
                "token_id": ids,
                "context_id": (ids // 128).astype(np.int32),
                "position": (ids % 128).astype(np.int32),
                "vocab_id": np.zeros(args.tokens, np.int32),
                "token": pa.array(["tok"] * args.tokens),
                "doc_id": np.zeros(args.tokens, np.int32),
                "char_start": np.zeros(args.tokens, np.int32),
                "char_end": np.zeros(args.tokens, np.int32),
            }
        )
        with store.transaction() as con:
            con.register("a", acts)
            con.register("t", tokens)
            con.execute("INSERT INTO feature_acts SELECT * FROM a")
            con.execute("INSERT INTO tokens SELECT * FROM t")
        build = time.perf_counter() - start
        top, contexts = [], []
        for feature in rng.choice(args.features, 20, replace=False):
            t0 = time.perf_counter()
            result = run_query(
                store,
                f"""
                SELECT f.value, t.context_id, t.position, t.token FROM feature_acts f JOIN tokens t USING (run, token_id)
                WHERE f.dictionary = 'd' AND f.feature = {int(feature)} ORDER BY f.value DESC LIMIT 20""",
            ).table
            top.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            run_query(
                store,
                f"""
                WITH top AS (SELECT run, token_id, value FROM feature_acts WHERE dictionary = 'd' AND feature = {int(feature)}
                             ORDER BY value DESC LIMIT 20),
                     ctx AS (SELECT DISTINCT t.run, t.context_id FROM top JOIN tokens t USING (run, token_id))
                SELECT t.context_id, t.position, t.token FROM tokens t JOIN ctx USING (run, context_id)
                ORDER BY t.context_id, t.position""",
            )
            contexts.append(time.perf_counter() - t0)
            assert result.num_rows <= 20
        print(f"hardware: {hardware()}")
        print(
            f"store: {args.rows:,} feature activations over {args.tokens:,} tokens, {args.features:,} features "
            f"(built in {build:.1f}s)"
        )
        print(
            f"top-20 activations with their tokens: median {1000 * statistics.median(top):.0f} ms, "
            f"max {1000 * max(top):.0f} ms (20 features; connection opening included)"
        )
        print(
            f"their 20 full contexts (128 tokens each): median {1000 * statistics.median(contexts):.0f} ms, "
            f"max {1000 * max(contexts):.0f} ms"
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
