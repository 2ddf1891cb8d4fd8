"""Seed bands: sibling dictionaries trained exactly as one dictionary was, with other seeds.

A dictionary NAME's siblings are NAME-seed1, NAME-seed2, ...: the same stored training settings, with seed + i (which
changes the initialisation and the batch order). Every benchmark runs on each sibling as on any dictionary; the scores
table (table.py) folds a dictionary and its siblings into one row of mean ± standard deviation. Chanin (2026) showed
single-seed benchmark numbers mislead; this is the band to read them against.
"""

from __future__ import annotations

import dataclasses
import re

from workbench.errors import EvaluationError
from workbench.store import Store, lookups
from workbench.train import TrainConfig, run_train

SIBLING = re.compile(r"^(?P<base>.+)-seed(?P<index>\d+)$")


def sibling_name(name: str, index: int) -> str:
    return f"{name}-seed{index}"


def base_of(name: str, names: set[str]) -> str:
    """The dictionary a name is the seed sibling of (itself if it is none's)."""
    match = SIBLING.match(name)
    return match["base"] if match and match["base"] in names else name


def train_siblings(store: Store, name: str, n_seeds: int, progress: bool = True) -> list[str]:
    """`name` and its n_seeds - 1 siblings, training those not complete yet (a killed one resumes)."""
    record = lookups.completed_dictionary(store, name)
    if n_seeds < 1:
        raise EvaluationError("--seeds must be at least 1.")
    if n_seeds == 1:
        return [name]
    stored = record.config or {}
    if "seed" not in stored or stored.get("layers"):
        raise EvaluationError(
            f"'{name}' was not trained by `workbench train` here (imported, or a cross-layer transcoder), so there are "
            "no training settings to repeat with other seeds; evaluate it with --seeds 1."
        )
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    settings = {key: value for key, value in stored.items() if key in fields}
    for key in ("hook", "hook_out", "k", "latents"):  # stored resolved, one value each; the Config takes lists
        if settings.get(key) is not None and not isinstance(settings[key], list):
            settings[key] = [settings[key]]
    names = [name]
    for index in range(1, n_seeds):
        sibling = sibling_name(name, index)
        existing = lookups.dictionary(store, sibling)
        if existing is None or existing.status != "complete":
            config = TrainConfig(
                **settings | {"store": str(store.root), "name": sibling, "seed": stored["seed"] + index}
            )
            run_train(config, progress=progress)
        names.append(sibling)
    return names
