"""Every dictionary's evaluations side by side, each a mean ± standard deviation over the dictionary and its seed
siblings (seeds.py): the core metrics (dictionary_evals, on the dictionary's own run), absorption, sparse probing and
autointerp (dictionary_scores' summaries)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from workbench.evals.seeds import base_of
from workbench.store import Store
from workbench.store.records import DictionaryEvalRecord, DictionaryRecord, ScoreRecord, read_all

# (benchmark, metric, column heading), in the table's order.
COLUMNS = (
    ("core", "fvu", "FVU"),
    ("core", "l0", "L0"),
    ("core", "dead_fraction", "dead"),
    ("core", "ce_loss_score", "CE score"),
    ("core", "delta_ce", "dCE"),
    ("absorption", "absorption_rate", "absorption"),
    ("absorption", "full_absorption", "full abs."),
    ("sparse_probing", "dense_accuracy", "dense probe"),
    ("sparse_probing", "top_1_accuracy", "top-1"),
    ("sparse_probing", "top_5_accuracy", "top-5"),
    ("sparse_probing", "top_20_accuracy", "top-20"),
    ("autointerp", "detection", "detection"),
    ("autointerp", "fuzzing", "fuzzing"),
    ("autointerp", "detection_random", "det. random"),
    ("autointerp", "detection_auc", "det. AUC"),
    ("autointerp", "detection_auc_random", "det. AUC random"),
)


@dataclass
class Band:
    mean: float
    std: float | None  # None with one value
    n: int  # dictionaries (seeds) behind it

    def text(self) -> str:
        """Four significant figures for the mean, two for the spread: "0.08213 ± 0.00041"."""
        return f"{self.mean:.4g}" + (f" ± {self.std:.2g}" if self.std is not None else "")


@dataclass
class DictionaryScores:
    dictionary: str
    arch: str
    hook: str
    members: list[str]  # the dictionary and its seed siblings
    bands: dict[tuple[str, str], Band]  # (benchmark, metric) -> band


def _values(store: Store) -> tuple[list[DictionaryRecord], dict[str, dict[tuple[str, str], float]]]:
    with store.reader() as con:
        dictionaries = read_all(con, DictionaryRecord, "status = 'complete'", order_by="name")
        evaluations = read_all(con, DictionaryEvalRecord, order_by="created_at")
        scores = read_all(con, ScoreRecord, "task = ''")
    runs = {d.name: d.run for d in dictionaries}
    # The latest evaluation, on the dictionary's own run when there is one: evaluations arrive oldest first, so
    # the last one ranked by (on its own run) wins.
    chosen: dict[str, DictionaryEvalRecord] = {}
    for e in sorted(evaluations, key=lambda e: e.eval_run == runs.get(e.dictionary)):  # stable: keeps age order
        if e.dictionary in runs:
            chosen[e.dictionary] = e
    values: dict[str, dict[tuple[str, str], float]] = {d.name: {} for d in dictionaries}
    for name, e in chosen.items():
        for metric in ("fvu", "l0", "dead_fraction", "ce_loss_score", "delta_ce"):
            if getattr(e, metric) is not None:
                values[name]["core", metric] = getattr(e, metric)
    for s in scores:
        if s.dictionary in values and s.value is not None:
            values[s.dictionary][s.benchmark, s.metric] = s.value
    return dictionaries, values


def score_table(store: Store) -> list[DictionaryScores]:
    """One row per dictionary that is not a seed sibling, its siblings' numbers folded into bands."""
    dictionaries, values = _values(store)
    names = {d.name for d in dictionaries}
    groups: dict[str, list[str]] = {}
    for d in dictionaries:
        groups.setdefault(base_of(d.name, names), []).append(d.name)
    rows = []
    for d in dictionaries:
        if d.name not in groups:
            continue
        members = sorted(groups[d.name], key=lambda n: (n != d.name, n))
        bands = {}
        for benchmark, metric, _ in COLUMNS:
            found = [values[m][benchmark, metric] for m in members if (benchmark, metric) in values[m]]
            if found:
                std = float(np.std(found, ddof=1)) if len(found) > 1 else None
                bands[benchmark, metric] = Band(float(np.mean(found)), std, len(found))
        rows.append(DictionaryScores(d.name, d.arch, d.hook, members, bands))
    return rows


@dataclass
class ScoresConfig:
    store: str
    """The store directory."""


@dataclass
class ScoresResult:
    table: list[DictionaryScores]


def run_scores(config: ScoresConfig) -> ScoresResult:
    return ScoresResult(score_table(Store.open_existing(config.store)))


def display_columns(table: list[DictionaryScores]) -> dict[str, list]:
    """The table as text columns: the dictionary, its arch and seeds, then "mean ± std" per metric any row has."""
    shown = [c for c in COLUMNS if any((c[0], c[1]) in row.bands for row in table)]
    data: dict[str, list] = {
        "dictionary": [row.dictionary for row in table],
        "arch": [row.arch for row in table],
        "seeds": [len(row.members) for row in table],
    }
    for benchmark, metric, heading in shown:
        data[heading] = [
            row.bands[benchmark, metric].text() if (benchmark, metric) in row.bands else "" for row in table
        ]
    return data


def metric_rows(table: list[DictionaryScores]) -> dict[str, list]:
    """The same, turned: one row per metric, one column per dictionary (headed "name (N seeds)"), for terminals."""
    columns = display_columns(table)
    names = [f"{d} ({n} seed{'s' if n > 1 else ''})" for d, n in zip(columns["dictionary"], columns["seeds"])]
    metrics = [key for key in columns if key not in ("dictionary", "seeds")]
    data: dict[str, list] = {"metric": metrics}
    for i, name in enumerate(names):
        data[name] = [str(columns[m][i]) for m in metrics]
    return data


def band_rows(table: list[DictionaryScores]) -> dict[str, list]:
    """Long columns (dictionary, metric, mean, std, seeds) for plots.score_bands."""
    data: dict[str, list] = {"dictionary": [], "metric": [], "mean": [], "std": [], "seeds": []}
    for benchmark, metric, heading in COLUMNS:
        for row in table:
            band = row.bands.get((benchmark, metric))
            if band is not None:
                for key, value in zip(data, (row.dictionary, heading, band.mean, band.std, band.n)):
                    data[key].append(value)
    return data
