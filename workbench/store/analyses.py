"""Writes and reads of probe and circuit result tables: a run's header record plus its measurement rows.

    PROBE_COLUMNS                         the columns each probe_* result table's rows fill, after probe_run
    replace_probe_run(store, record, tables)    a probe run and its measurements, replacing any of that name
    CIRCUIT_COLUMNS                       the columns each circuit result table's rows fill, after circuit_run
    replace_circuit_run(store, record, tables)  a circuit run and its rows, replacing any of that name
    patching_run(store, name)             a patching run's record, or None
    newest_patching_run(store, task)      the task's newest patching run that has head scores, or None
    head_scores(store, circuit_run)       (layer, head, score) of a patching run's head level
    replace_graph(store, record)          an attribution graph's catalog row, replacing any of that name
    add_intervention(store, record)       one intervention on a graph's features (circuit_interventions)

Each replace is one transaction: readers see the old results or the new ones, never a mix.
"""

from __future__ import annotations

from workbench.store.catalog import Store
from workbench.store.records import (CircuitRunRecord, GraphRecord, InterventionRecord, ProbeRunRecord, delete,
                                     delete_rows, insert, insert_rows, read_all, read_one)

PROBE_COLUMNS: dict[str, tuple[str, ...]] = {
    "probe_sublayer": ("layer", "metric", "mean", "max", "n_tokens"),
    "probe_skip_layers": ("skipped_layer", "affected_layer", "rel_change_mean", "rel_change_max", "n_tokens"),
    "probe_skip_output": ("skipped_layer", "prob_l2_mean", "prob_l2_max", "kl_mean", "kl_max", "skipped_kl_mean",
                          "skipped_kl_max", "n_tokens"),
    "probe_logit_lens": ("layer", "kl_mean", "kl_max", "top5_overlap_mean", "n_tokens"),
    "probe_linear_maps": ("source_layer", "target_layer", "source_rel_depth", "target_rel_depth", "rel_error",
                          "n_train", "n_test"),
    "probe_depth_scores": ("task", "measure", "depth_score", "relative_depth_score"),
}

CIRCUIT_COLUMNS: dict[str, tuple[str, ...]] = {
    "circuit_patching": ("level", "layer", "head", "position", "metric", "score"),
    "circuit_code_heads": ("layer", "head", "unique_positive_codes", "in_reference"),
    "circuit_code_pairs": ("layer_a", "head_a", "layer_b", "head_b", "unique_positive_codes"),
}


def replace_probe_run(store: Store, record: ProbeRunRecord, tables: dict[str, list[tuple]]) -> ProbeRunRecord:
    """Replace everything stored under record.probe_run with this record and `tables` ({table: rows in
    PROBE_COLUMNS order}), in one transaction; returns the record as stored (with its timestamp)."""
    name = record.probe_run
    with store.transaction() as con:
        for table in PROBE_COLUMNS:
            delete_rows(con, table, probe_run=name)
        delete(con, ProbeRunRecord, probe_run=name)
        insert(con, record)
        for table, rows in tables.items():
            insert_rows(con, table, ("probe_run", *PROBE_COLUMNS[table]), [(name, *row) for row in rows])
        stored = read_one(con, ProbeRunRecord, probe_run=name)
        assert stored is not None  # inserted just above, in this transaction
        return stored


def replace_circuit_run(store: Store, record: CircuitRunRecord, tables: dict[str, list[tuple]]) -> CircuitRunRecord:
    """Replace everything stored under record.circuit_run with this record and `tables` ({table: rows in
    CIRCUIT_COLUMNS order}), in one transaction; returns the record as stored (with its timestamp)."""
    name = record.circuit_run
    with store.transaction() as con:
        for table in CIRCUIT_COLUMNS:
            delete_rows(con, table, circuit_run=name)
        delete(con, CircuitRunRecord, circuit_run=name)
        insert(con, record)
        for table, rows in tables.items():
            insert_rows(con, table, ("circuit_run", *CIRCUIT_COLUMNS[table]), [(name, *row) for row in rows])
        stored = read_one(con, CircuitRunRecord, circuit_run=name)
        assert stored is not None  # inserted just above, in this transaction
        return stored


# For messages: the `workbench sql` query that lists the patching runs.
PATCHING_RUNS_QUERY = "SELECT circuit_run, task FROM circuit_runs WHERE method = 'patching'"


def patching_run(store: Store, name: str) -> CircuitRunRecord | None:
    with store.reader() as con:
        return read_one(con, CircuitRunRecord, circuit_run=name, method="patching")


def newest_patching_run(store: Store, task: str) -> CircuitRunRecord | None:
    """The task's newest patching run with head scores: the reference a codes run scores itself against."""
    with store.reader() as con:
        found = read_all(con, CircuitRunRecord, "EXISTS (SELECT 1 FROM circuit_patching p WHERE p.circuit_run = "
                         "circuit_runs.circuit_run AND p.level = 'heads')", order_by="created_at DESC",
                         method="patching", task=task)
    return found[0] if found else None


def head_scores(store: Store, circuit_run: str) -> list[tuple[int, int, float]]:
    """(layer, head, score) per head of a patching run's `heads` level; empty if it has none."""
    with store.reader() as con:
        return con.execute("SELECT layer, head, score FROM circuit_patching WHERE circuit_run = ? AND level = 'heads'",
                           [circuit_run]).fetchall()


def add_intervention(store: Store, record: InterventionRecord) -> InterventionRecord:
    """Append an intervention's row; returns it with its timestamp."""
    with store.transaction() as con:
        insert(con, record)
        stored = read_all(con, InterventionRecord, graph=record.graph, order_by="created_at DESC")[0]
        return stored


def replace_graph(store: Store, record: GraphRecord) -> GraphRecord:
    """Replace the graph's catalog row; returns the record as stored (with its timestamp)."""
    with store.transaction() as con:
        delete(con, GraphRecord, graph=record.graph)
        insert(con, record)
        stored = read_one(con, GraphRecord, graph=record.graph)
        assert stored is not None  # inserted just above, in this transaction
        return stored
