"""Probe results: what a probe run returns, how it is stored, and the depth score derived from them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from workbench.provenance import git_commit, package_version
from workbench.store import Store
from workbench.store.analyses import replace_probe_run
from workbench.store.records import ProbeRunRecord


@dataclass
class ProbeResult:
    """A stored probe run: its catalog record (the measurements are in the probe_* tables under its name)."""

    probe_run: ProbeRunRecord


def depth_score(effects: dict[int, float]) -> float:
    """The effect-weighted mean layer index: sum(l * e_l) / sum(e_l)."""
    layers = np.array(sorted(effects), dtype=float)
    weights = np.array([effects[int(l)] for l in layers], dtype=float)
    return float((layers * weights).sum() / weights.sum()) if weights.sum() > 0 else float("nan")


def write_probe_run(store: Store, probe_run: str, header: dict, tables: dict[str, list[tuple]]) -> ProbeResult:
    """Replace everything stored under `probe_run` with these results, in one transaction. `header` holds the
    ProbeRunRecord's fields other than the name and provenance; `tables` the rows of each probe_* table."""
    record = ProbeRunRecord(
        probe_run=probe_run,
        target_model=header.pop("target_model", None),
        **header,
        package_version=package_version(),
        git_commit=git_commit(),
    )
    return ProbeResult(replace_probe_run(store, record, tables))
