"""Sparse feature activations: their one write (replace_encoding), and reads for feature pages and scripts.

A dictionary's activations are either rows of the catalog's `feature_rows` table or, for large encodes,
Parquet files with one bucket of consecutive features each (`feature_parts`); the `feature_acts` view reads
both. Both are written sorted by (feature, value DESC) (encode.py), so one feature's rows sit in a few row
groups and DuckDB skips the rest by their min/max. Queries on one feature read from `_source`: its bucket's
file alone, or the table, never the view over every file. workbench/features.py shapes these rows into what
the pages show.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from workbench.store.catalog import Store
from workbench.store.records import FeaturePartRecord, delete_rows, insert, insert_arrow, read_all, scalar
from workbench.store.schema import rebuild_feature_view


def feature_part_path(dictionary: str, bucket: int, generation: str) -> str:
    """The store-relative path of one bucket file; `generation` keeps a re-encode from overwriting committed files."""
    return f"features/dictionary={dictionary}/bucket-{bucket:06d}-{generation}.parquet"


def replace_encoding(store: Store, dictionary: str, stats: pa.Table, rows: pa.Table | None = None,
                     parts: Sequence[FeaturePartRecord] = ()) -> None:
    """Replace a dictionary's feature activations (rows in the catalog, or committed Parquet parts) and its
    feature_stats in one transaction; then delete the files of the parts it replaced."""
    with store.transaction() as con:
        old = [part.path for part in read_all(con, FeaturePartRecord, dictionary=dictionary)]
        for table in ("feature_rows", "feature_parts", "feature_stats"):
            delete_rows(con, table, dictionary=dictionary)
        if rows is not None:
            insert_arrow(con, "feature_rows", rows)
        for part in parts:
            insert(con, part)
        insert_arrow(con, "feature_stats", stats)
        rebuild_feature_view(con)
    kept = {part.path for part in parts}
    for path in old:
        if path not in kept:
            (store.root / path).unlink(missing_ok=True)


def drop_encoding(store: Store, dictionary: str) -> None:
    """Unregister a dictionary's whole encoding (a damaged part makes it incomplete) and delete its files, so that
    `workbench encode` writes it again."""
    with store.transaction() as con:
        for table in ("feature_rows", "feature_parts", "feature_stats"):
            delete_rows(con, table, dictionary=dictionary)
        rebuild_feature_view(con)
    remove_unregistered_feature_files(store, dictionary)


def remove_unregistered_feature_files(store: Store, dictionary: str) -> int:
    """Delete files under the dictionary's feature folder that no committed part points to (a killed encode's)."""
    folder = store.root / "features" / f"dictionary={dictionary}"
    if not folder.exists():
        return 0
    with store.reader() as con:
        committed = {part.path for part in read_all(con, FeaturePartRecord, dictionary=dictionary)}
    removed = 0
    for file in sorted(folder.rglob("*"), reverse=True):  # files before their folders
        if file.is_file() and file.relative_to(store.root).as_posix() not in committed:
            file.unlink()
            removed += 1
        elif file.is_dir() and not any(file.iterdir()):
            file.rmdir()
    return removed


def _source(con, dictionary: str, feature: int) -> str:
    """The FROM clause holding one feature's rows: its bucket's Parquet file, or the in-catalog table."""
    rows = con.execute("SELECT path FROM feature_parts WHERE dictionary = ? AND bucket = ? // bucket_width",
                       [dictionary, feature]).fetchall()  # all: fetchone would leave the result open on `con`
    return "feature_rows" if not rows else "read_parquet('" + rows[0][0].replace("'", "''") + "')"


def feature_window_values(store: Store, dictionary: str, feature: int) -> tuple[str, list]:
    """SQL and parameters for context_windows' `values_sql`: a feature's value on each token of the windows."""
    with store.reader() as con:
        source = _source(con, dictionary, feature)
    return (f"SELECT token_id, value FROM {source} WHERE dictionary = ? AND feature = ? "
            "AND token_id IN (SELECT token_id FROM window_ids)", [dictionary, feature])

BROWSE_ORDERS = {"density": "density DESC", "rarest": "density ASC", "max activation": "max DESC NULLS LAST"}


def is_encoded(store: Store, dictionary: str) -> bool:
    with store.reader() as con:
        return scalar(con, "SELECT count(*) FROM feature_stats WHERE dictionary = ?", [dictionary]) > 0


def window_tokens(store: Store, run: str, spans: pa.Table, values_sql: str,
                  values_params: list) -> tuple[list[tuple], dict[int, float]]:
    """Tokens of the windows `spans` (centre, lo, hi) as (centre, token_id, token, context_id) rows, and
    {token_id: value} from `values_sql`, which reads the windows' token ids from the table `window_ids`."""
    with store.reader() as con:
        con.register("spans", spans)
        rows = con.execute(
            "SELECT s.centre, t.token_id, t.token, t.context_id FROM spans s JOIN tokens t "
            "ON t.run = ? AND t.token_id BETWEEN s.lo AND s.hi ORDER BY s.centre, t.token_id", [run]).fetchall()
        con.register("window_ids", pa.table({"token_id": pa.array(sorted({r[1] for r in rows}), pa.int64())}))
        values = dict(con.execute(values_sql, values_params).fetchall())
    return rows, values


def top_hits(store: Store, dictionary: str, feature: int, context_len: int, n: int) -> list[tuple[int, float]]:
    """(token_id, value) of the feature's n highest activations, at most one per context.

    Rows are stored by value descending within a feature, so the answer is almost always among the first
    rows: those are read alone (a LIMIT without ORDER BY stops the scan early, in stored order), and the
    whole feature only when they hold fewer than n contexts. A dense feature's page thus reads a few
    thousand rows, not millions (bench/feature_acts.py)."""
    query = ("SELECT token_id, value FROM (SELECT token_id, value FROM {source} WHERE dictionary = ? AND feature = ? "
             "{head}) QUALIFY row_number() OVER (PARTITION BY token_id // ? ORDER BY value DESC) = 1 "
             "ORDER BY value DESC, token_id LIMIT ?")
    with store.reader() as con:
        source = _source(con, dictionary, feature)
        head = max(64 * n, 4096)
        hits = con.execute(query.format(source=source, head=f"LIMIT {head}"),
                           [dictionary, feature, context_len, n]).fetchall()
        if len(hits) < n:
            hits = con.execute(query.format(source=source, head=""), [dictionary, feature, context_len, n]).fetchall()
    return hits


def quantile_hits(store: Store, dictionary: str, feature: int, n_intervals: int,
                  per_interval: int) -> list[tuple[int, float, int, int, float]]:
    """(interval, max value, activations in the interval, token_id, value) rows, highest interval first: up to
    `per_interval` activations from each of n_intervals equal-width intervals of (0, max], picked by a hash of
    the token id (spread over the corpus, and the same on every call)."""
    with store.reader() as con:
        return con.execute(
            f"WITH acts AS (SELECT token_id, value, max(value) OVER () AS top FROM {_source(con, dictionary, feature)} "
            "              WHERE dictionary = ? AND feature = ?), "
            "binned AS (SELECT *, least(CAST(floor(value / top * ?) AS INTEGER), ? - 1) AS interval FROM acts), "
            "counted AS (SELECT *, count(*) OVER (PARTITION BY interval) AS n_in, "
            "            row_number() OVER (PARTITION BY interval ORDER BY hash(token_id), token_id) AS pick "
            "FROM binned) "
            "SELECT interval, top, n_in, token_id, value FROM counted WHERE pick <= ? "
            "ORDER BY interval DESC, value DESC",
            [dictionary, feature, n_intervals, n_intervals, per_interval]).fetchall()


def feature_stats(store: Store, dictionary: str, feature: int) -> tuple | None:
    """(n_active, density, max, mean, q50, q90, q99, density rank, number of features), or None if not encoded."""
    with store.reader() as con:
        return con.execute(
            "SELECT n_active, density, max, mean, q50, q90, q99, rank, n FROM ("
            "  SELECT *, rank() OVER (ORDER BY density DESC) AS rank, count(*) OVER () AS n "
            "  FROM feature_stats WHERE dictionary = ?) WHERE feature = ?", [dictionary, feature]).fetchone()


def feature_values(store: Store, dictionary: str, feature: int) -> np.ndarray:
    """Every stored activation of the feature."""
    with store.reader() as con:
        return np.asarray(con.execute(f"SELECT value FROM {_source(con, dictionary, feature)} "
                                      "WHERE dictionary = ? AND feature = ?", [dictionary, feature]).fetchnumpy()["value"])


def densities(store: Store, dictionary: str) -> np.ndarray:
    """The density of every feature that fired at least once."""
    with store.reader() as con:
        return np.asarray(con.execute("SELECT density FROM feature_stats WHERE dictionary = ? AND n_active > 0",
                                      [dictionary]).fetchnumpy()["density"], dtype=np.float64)


def top_tokens(store: Store, dictionary: str, feature: int, n: int) -> pa.Table:
    """The token texts the feature fires on most often: token, n, mean_value, max_value."""
    with store.reader() as con:
        return con.sql(
            "SELECT t.token, count(*) AS n, avg(a.value) AS mean_value, max(a.value) AS max_value "
            f"FROM {_source(con, dictionary, feature)} a JOIN tokens t ON t.run = a.run AND t.token_id = a.token_id "
            "WHERE a.dictionary = ? AND a.feature = ? GROUP BY t.token ORDER BY n DESC, max_value DESC LIMIT ?",
            params=[dictionary, feature, n]).to_arrow_table()


def features_table(store: Store, dictionary: str, order: str = "density", min_density: float = 0.0,
                   max_density: float = 1.0, limit: int = 200) -> pa.Table:
    """Browse a dictionary: features that fired, with density between the bounds, in a BROWSE_ORDERS order."""
    if order not in BROWSE_ORDERS:
        raise ValueError(f"order must be one of {', '.join(BROWSE_ORDERS)}")
    with store.reader() as con:
        return con.sql(
            f"SELECT feature, n_active, density, max, mean, q90 FROM feature_stats WHERE dictionary = ? "
            f"AND n_active > 0 AND density BETWEEN ? AND ? ORDER BY {BROWSE_ORDERS[order]}, feature LIMIT ?",
            params=[dictionary, min_density, max_density, limit]).to_arrow_table()


def features_on_token(store: Store, dictionary: str, run: str, token_text: str, limit: int) -> pa.Table:
    """Features ranked by how often they fire on tokens of `run` whose text is `token_text` (trimmed, any case):
    feature, n_on_token, mean_value, max_value, share (of the feature's firings that land on this token)."""
    with store.reader() as con:
        return con.sql(
            "WITH matching AS (SELECT token_id FROM tokens WHERE run = ? AND lower(trim(token)) = lower(trim(?))) "
            "SELECT a.feature, count(*) AS n_on_token, avg(a.value) AS mean_value, max(a.value) AS max_value, "
            "       count(*) / any_value(s.n_active) AS share "
            "FROM feature_acts a JOIN matching m USING (token_id) "
            "JOIN feature_stats s ON s.dictionary = a.dictionary AND s.feature = a.feature "
            "WHERE a.dictionary = ? GROUP BY a.feature ORDER BY n_on_token DESC, max_value DESC LIMIT ?",
            params=[run, token_text, dictionary, limit]).to_arrow_table()
