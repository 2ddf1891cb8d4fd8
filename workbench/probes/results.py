"""Writing probe results to the store, and the depth score derived from them."""

from __future__ import annotations

import json

import numpy as np

from workbench.provenance import git_commit, package_version
from workbench.store import Store

_RESULT_TABLES = ("probe_sublayer", "probe_skip_layers", "probe_skip_output", "probe_logit_lens",
                  "probe_linear_maps", "probe_depth_scores")


def depth_score(effects: dict[int, float]) -> float:
    """The effect-weighted mean layer index: sum(l * e_l) / sum(e_l)."""
    layers = np.array(sorted(effects), dtype=float)
    weights = np.array([effects[int(l)] for l in layers], dtype=float)
    return float((layers * weights).sum() / weights.sum()) if weights.sum() > 0 else float("nan")


def write_probe_run(store: Store, probe_run: str, header: dict, tables: dict[str, list[tuple]]) -> None:
    """Replace everything stored under `probe_run` with these results, in one transaction."""
    with store.transaction() as con:
        for table in _RESULT_TABLES:
            con.execute(f"DELETE FROM {table} WHERE probe_run = ?", [probe_run])
        con.execute("DELETE FROM probe_runs WHERE probe_run = ?", [probe_run])
        con.execute(
            "INSERT INTO probe_runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, now())",
            [probe_run, header["kind"], header["model"], header.get("target_model"), header["backend"],
             header["corpus"], header["task"], header["n_layers"], header["n_tokens"],
             json.dumps(header["config"]), package_version(), git_commit()],
        )
        for table, rows in tables.items():
            if rows:
                marks = ", ".join("?" * (len(rows[0]) + 1))
                con.executemany(f"INSERT INTO {table} VALUES ({marks})", [(probe_run, *row) for row in rows])
