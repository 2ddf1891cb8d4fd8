"""The catalog record of a circuit analysis: one `circuit_runs` row per analysis (its rows are written by
workbench/store/analyses.py)."""

from __future__ import annotations

from dataclasses import asdict

from workbench.circuits.tasks import TokenizedTask
from workbench.devices import Placement
from workbench.provenance import git_commit, package_version
from workbench.store.records import CircuitRunRecord


def circuit_record(
    name: str,
    method: str,
    task: TokenizedTask,
    model: str,
    backend: str,
    metrics: tuple[float, float],
    wall_s: float,
    config: dict,
    reference_run: str | None = None,
    aucs: tuple[float | None, float | None] = (None, None),
    placement: Placement | None = None,
) -> CircuitRunRecord:
    """The header row of a circuit analysis of `task`."""
    # The first clean prompt's tokens label the positions (every prompt has the same length).
    prompts = {"pairs": [asdict(pair) for pair in task.task.pairs], "position_tokens": task.tokens[0]}
    return CircuitRunRecord(
        circuit_run=name,
        method=method,
        task=task.task.name,
        model=model,
        backend=backend,
        metric=task.task.metric,
        n_pairs=len(task.clean_ids),
        seq_len=task.seq_len,
        metric_clean=metrics[0],
        metric_corrupted=metrics[1],
        prompts=prompts,
        wall_s=wall_s,
        reference_run=reference_run,
        roc_auc_heads=aucs[0],
        roc_auc_pairs=aucs[1],
        config=config,
        package_version=package_version(),
        git_commit=git_commit(),
        device=placement.device_name if placement else None,
        dtype=placement.dtype_name if placement else None,
    )
