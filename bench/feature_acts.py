"""Where feature activations should live: the catalog table against Parquet parts, by size, for a feature page.

    python bench/feature_acts.py                      # 3M, 30M and 300M stored activations
    python bench/feature_acts.py --rows 3M,30M        # quicker

For each size, builds two stores holding the same synthetic encoding (10M tokens' worth at 300M rows:
16,384 features with Zipf-like densities, values sorted within each feature, as `workbench encode`
writes them): one with the rows in the catalog's `feature_rows` table, one with one Parquet file per
bucket of 256 features (`feature_parts`). Then times, side by side, the feature page's read
(`store.features.top_hits`: the top 20 activations, one per context, connection opening included) on a
dense, a median and a rare feature, median of 5 calls each; and how long writing each took, and its bytes.
Prints the absolute numbers, the hardware, and the ratio table / parquet.
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
import pyarrow.parquet as pq

from workbench.cli.options import int_with_suffix
from workbench.encode import ROW_GROUP_ROWS, feature_stats_table, rows_table
from workbench.store import Store
from workbench.store.features import feature_part_path, replace_encoding, top_hits
from workbench.store.records import FeaturePartRecord, insert_arrow
from workbench.store.shards import file_sha256

sys.path.insert(0, str(Path(__file__).parent))
from harvest import hardware  # noqa: E402

N_FEATURES, BUCKET, CONTEXT_LEN = 16_384, 256, 128


def buckets(rows: int, seed: int = 0):
    """(bucket, token_ids, features, values) per bucket of BUCKET features, sorted by (feature, value desc)."""
    rng = np.random.default_rng(seed)
    weights = 1 / np.arange(1, N_FEATURES + 1) ** 0.8
    weights = weights[rng.permutation(N_FEATURES)]  # dense features spread over the buckets
    counts = rng.multinomial(rows, weights / weights.sum())
    n_tokens = max(rows // 32, 1)  # k = 32
    for bucket in range(N_FEATURES // BUCKET):
        ids = np.arange(bucket * BUCKET, (bucket + 1) * BUCKET, dtype=np.int32)
        features = np.repeat(ids, counts[ids])
        values = rng.exponential(1.0, len(features)).astype(np.float32)
        order = np.lexsort((-values, features))
        yield bucket, rng.integers(0, n_tokens, len(features)), features, values[order]


def build(root: Path, rows: int, where: str) -> tuple[float, int]:
    """Write the synthetic encoding into a new store at `root`; returns (seconds, bytes on disk)."""
    store = Store.create_or_open(root)
    start = time.perf_counter()
    parts, stats = [], []
    for bucket, tokens, features, values in buckets(rows):
        table = rows_table("d", "r", tokens, features, values)
        stats.append(
            feature_stats_table("d", features, values, np.arange(bucket * BUCKET, (bucket + 1) * BUCKET), rows // 32)
        )
        if where == "table":
            with store.transaction() as con:
                insert_arrow(con, "feature_rows", table)
        else:
            path = feature_part_path("d", bucket, "bench")
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, root / path, row_group_size=ROW_GROUP_ROWS)
            parts.append(FeaturePartRecord("d", "r", bucket, BUCKET, path, len(table), (root / path).stat().st_size,
                                           file_sha256(root / path)))  # fmt: skip
    if where == "parquet":
        import pyarrow as pa

        replace_encoding(store, "d", pa.concat_tables(stats), parts=parts)
    seconds = time.perf_counter() - start
    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    return seconds, size


def time_top20(store: Store, feature: int, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        hits = top_hits(store, "d", feature, CONTEXT_LEN, 20)
        times.append(time.perf_counter() - start)
    assert len(hits) == 20, hits
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="3M,30M,300M", help="stored activations per size, comma-separated")
    args = parser.parse_args()
    print(f"hardware: {hardware()}")
    print(f"{'rows':>6} {'feature':>14} {'table ms':>9} {'parquet ms':>11} {'table/parquet':>14}")
    for rows in (int_with_suffix(r) for r in args.rows.split(",")):
        folder = Path(tempfile.mkdtemp(prefix="bench-feature-acts-"))
        try:
            built = {where: build(folder / where, rows, where) for where in ("table", "parquet")}
            stores = {where: Store.open_existing(folder / where) for where in built}
            with stores["parquet"].reader() as con:  # the same encoding in both; stats are written with the parts
                by_count = con.execute(
                    "SELECT feature FROM feature_stats WHERE n_active >= 20 ORDER BY n_active DESC"
                ).fetchall()
            picks = {"dense": by_count[0][0], "median": by_count[len(by_count) // 2][0], "rare": by_count[-1][0]}
            for label, feature in picks.items():
                t = {where: time_top20(store, feature) for where, store in stores.items()}
                print(f"{rows / 1e6:>5.0f}M {label + ' ' + str(feature):>14} {1e3 * t['table']:>9.1f} "
                      f"{1e3 * t['parquet']:>11.1f} {t['table'] / t['parquet']:>13.2f}x")  # fmt: skip
            for where, (seconds, size) in built.items():
                print(f"{'':>6} write {where:<8} {seconds:7.1f} s, {size / 1e9:6.2f} GB")
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
