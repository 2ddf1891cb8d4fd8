"""Reads of feature_explanations: a feature's explanations, the best label per feature, and search by words."""

from __future__ import annotations

import pyarrow as pa

from workbench.store.catalog import Store
from workbench.store.records import ExplanationRecord, read_all


def of_feature(store: Store, dictionary: str, feature: int) -> list[ExplanationRecord]:
    """Every explanation of the feature, the best detection score first."""
    with store.reader() as con:
        rows = read_all(con, ExplanationRecord, dictionary=dictionary, feature=feature)
    return sorted(rows, key=lambda r: -(r.detection if r.detection is not None else -1.0))


def best_labels(store: Store, dictionaries: list[str]) -> dict[tuple[str, int], str]:
    """(dictionary, feature) -> its explanation with the best detection score: node labels of attribution graphs."""
    if not dictionaries:
        return {}
    with store.reader() as con:
        rows = con.execute(
            "SELECT dictionary, feature, arg_max(explanation, coalesce(detection, -1)) FROM feature_explanations "
            "WHERE dictionary IN (SELECT unnest(?)) GROUP BY dictionary, feature",
            [list(dictionaries)],
        ).fetchall()
    return {(d, int(f)): text for d, f, text in rows}


def search(store: Store, dictionary: str, query: str, limit: int = 50) -> pa.Table:
    """Features whose explanation holds the query's words (any case), the most words matched first, then the best
    detection score: "features about ..." in the app."""
    words = [w for w in query.lower().split() if w]
    if not words:
        return pa.table({"feature": pa.array([], pa.int32()), "explanation": pa.array([], pa.string())})
    matched = " + ".join("CAST(contains(lower(explanation), ?) AS INTEGER)" for _ in words)
    with store.reader() as con:
        return con.execute(
            f"SELECT feature, explanation, detection, fuzzing, explainer, {matched} AS words_matched "
            "FROM feature_explanations WHERE dictionary = ? AND words_matched > 0 "
            "ORDER BY words_matched DESC, detection DESC NULLS LAST, feature LIMIT ?",
            [*words, dictionary, limit],
        ).to_arrow_table()
