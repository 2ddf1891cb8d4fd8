"""Reads of analysis results and listings for pages, analyses and scripts.

The app's pages render what these functions return and hold no SQL and no store paths of their
own, so a script that wants "the overview's dictionary table" or "a probe run's tables" gets the
same rows the app shows. Every function takes an open `Store` and reads the last committed state
through short read-only connections (catalog.py), so all of them work while a harvest or a
training run writes to the same store.

    catalog_stamp                changes whenever a writer commits: a cache key for everything below
    overview / Overview          the overview page's six tables, read in one connection
    harvest_runs, hook_points, dictionaries, codebooks       the overview's tables one by one
    probe_runs, probe_tables     depth-usage and linear-map probe results (workbench/probes)
    circuit_runs, circuit_tables activation-patching and code-circuit results (workbench/circuits)
    attribution_graphs, attribution_graph   attribution graphs through transcoders and their JSON
    complete_dictionary_names, complete_transcoder_names, complete_codebook_names   pickers' lists
    dictionary_weights_stamp, codebook_weights_stamp        cache keys for loaded weights
    model_dir                    the folder of a run's model as this store keeps it

Feature-level reads (contexts, histograms, ...) live in workbench/features.py and codebook reads
in workbench/codebooks/browse.py; this module does not repeat them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pandas as pd

from workbench.errors import StoreError
from workbench.store import lookups
from workbench.store.catalog import Store
from workbench.store.records import CodebookRecord, DictionaryRecord, read_all

# The probe result tables of one probe run, in the order the layers page shows them raw.
PROBE_TABLES = ("probe_sublayer", "probe_skip_layers", "probe_skip_output", "probe_logit_lens", "probe_linear_maps",
                "probe_depth_scores")

# Columns the overview lists for probe and circuit runs (the pages that draw them read more).
OVERVIEW_PROBE_COLUMNS = ["probe_run", "kind", "model", "target_model", "task", "n_layers", "n_tokens", "created_at"]
OVERVIEW_CIRCUIT_COLUMNS = ["circuit_run", "method", "task", "model", "metric", "n_pairs", "metric_clean",
                            "metric_corrupted", "created_at"]


# -- the stamp every cache keys on ----------------------------------------------------------------

def catalog_stamp(store: Store) -> int:
    """A number that changes whenever a writer commits: the catalog or its write-ahead log is rewritten.

    Caches keyed on it serve nothing stale, and stay valid as long as nobody commits."""
    total = 0
    for path in (store.catalog_path, store.catalog_path.with_name(store.catalog_path.name + ".wal")):
        try:
            total += path.stat().st_mtime_ns
        except FileNotFoundError:
            pass
    return total


# -- the overview's tables ------------------------------------------------------------------------

def _harvest_runs(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    return con.execute("SELECT run, model, backend, corpus, n_tokens, context_len, len(hooks) AS n_hooks, status, "
                       "created_at FROM runs ORDER BY created_at").df()


def _hook_points(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    return con.execute("SELECT h.run, h.hook, h.d, count(s.chunk) AS shards, coalesce(sum(s.n_rows), 0) AS tokens, "
                       "coalesce(sum(s.n_bytes), 0) / 1e6 AS mb FROM hook_points h LEFT JOIN shards s USING (run, hook) "
                       "GROUP BY h.run, h.hook, h.d, h.layer ORDER BY h.run, h.layer, h.hook").df()


def _dictionaries(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    # The newest evaluation of each dictionary, if it has one; `encoded` says whether it has feature pages.
    return con.execute(
        "SELECT d.name, d.arch, d.hook, d.hook_out, d.n_latents, d.k, d.status, d.tokens_done, "
        "e.fvu, e.l0, coalesce(e.dead_fraction, d.dead_fraction) AS dead_fraction, e.ce_loss_score, "
        "e.delta_ce, d.train_fvu, (SELECT count(*) > 0 FROM feature_stats f WHERE f.dictionary = d.name) "
        "AS encoded FROM dictionaries d LEFT JOIN (SELECT * FROM dictionary_evals "
        "QUALIFY row_number() OVER (PARTITION BY dictionary ORDER BY created_at DESC) = 1) e "
        "ON e.dictionary = d.name ORDER BY d.name").df()


def _codebooks(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    return con.execute(
        "SELECT name, model, sites, n_codes, k, status, lm_loss_original, lm_loss_codebooks, lm_loss_increase, "
        "(SELECT count(DISTINCT run) FROM codebook_codes c WHERE c.codebook = b.name) AS encoded_runs, "
        "created_at FROM codebooks b ORDER BY created_at").df()


def _probe_runs(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    return con.execute("SELECT probe_run, kind, model, target_model, task, n_layers, n_tokens, created_at "
                       "FROM probe_runs ORDER BY created_at").df()


def _circuit_runs(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    return con.execute("SELECT circuit_run, method, task, model, metric, n_pairs, seq_len, metric_clean, "
                       "metric_corrupted, prompts, wall_s, reference_run, roc_auc_heads, roc_auc_pairs, created_at "
                       "FROM circuit_runs ORDER BY created_at").df()


def harvest_runs(store: Store) -> pd.DataFrame:
    """Harvest runs, oldest first: run, model, backend, corpus, n_tokens, context_len, n_hooks, status, created_at."""
    with store.reader() as con:
        return _harvest_runs(con)


def hook_points(store: Store) -> pd.DataFrame:
    """Every run's hook points with their committed shards: run, hook, d, shards, tokens (rows), mb.

    Counts only committed shards, so during a harvest it grows chunk by chunk."""
    with store.reader() as con:
        return _hook_points(con)


def dictionaries(store: Store) -> pd.DataFrame:
    """Every dictionary by name with its newest evaluation (fvu, l0, ce_loss_score, delta_ce: NaN before
    `workbench eval`), its training FVU, and `encoded` (True once `workbench encode` wrote its features)."""
    with store.reader() as con:
        return _dictionaries(con)


def codebooks(store: Store) -> pd.DataFrame:
    """Every codebook set, oldest first, with its LM losses and how many harvest runs have its codes stored."""
    with store.reader() as con:
        return _codebooks(con)


@dataclass(frozen=True)
class Overview:
    """What a store holds, as the overview page lists it; read in one connection, so from one commit."""

    runs: pd.DataFrame  # harvest_runs
    hooks: pd.DataFrame  # hook_points
    dictionaries: pd.DataFrame  # dictionaries
    probes: pd.DataFrame  # probe runs, OVERVIEW_PROBE_COLUMNS
    circuits: pd.DataFrame  # circuit runs, OVERVIEW_CIRCUIT_COLUMNS
    codebooks: pd.DataFrame  # codebooks


def overview(store: Store) -> Overview:
    """The overview's tables, all from the same committed state of the store."""
    with store.reader() as con:
        return Overview(runs=_harvest_runs(con), hooks=_hook_points(con), dictionaries=_dictionaries(con),
                        probes=_probe_runs(con)[OVERVIEW_PROBE_COLUMNS],
                        circuits=_circuit_runs(con)[OVERVIEW_CIRCUIT_COLUMNS], codebooks=_codebooks(con))


# -- probes ---------------------------------------------------------------------------------------

def probe_runs(store: Store) -> pd.DataFrame:
    """Probe runs, oldest first: probe_run, kind ('depth' or 'linear_maps'), model, target_model, task,
    n_layers, n_tokens, created_at."""
    with store.reader() as con:
        return _probe_runs(con)


def probe_tables(store: Store, probe_run: str) -> dict[str, pd.DataFrame]:
    """The result tables of one probe run, keyed by table name (PROBE_TABLES), without the probe_run column.

    A table the run did not fill (a depth run has no linear maps; --skip-tokens 0 skips no layers) is empty."""
    with store.reader() as con:
        return {table: con.execute(f"SELECT * EXCLUDE (probe_run) FROM {table} WHERE probe_run = ?",
                                   [probe_run]).df() for table in PROBE_TABLES}


# -- circuits -------------------------------------------------------------------------------------

def circuit_runs(store: Store) -> pd.DataFrame:
    """Circuit analyses, oldest first, with everything the circuits page shows about a run: method
    ('patching' or 'codes'), task, metric and its clean/corrupted values, prompts (JSON text), wall_s,
    and for the codes method its reference run and ROC AUCs."""
    with store.reader() as con:
        return _circuit_runs(con)


def circuit_tables(store: Store, circuit_run: str) -> dict[str, pd.DataFrame]:
    """The results of one circuit analysis:

    scores      activation-patching scores: level ('heads', 'layers', 'head-positions'), layer, head,
                position, metric, score
    code_heads  heads by the codes unique to positive prompts: layer, head, score (the count), in_reference
    code_pairs  the 20 head pairs with the most such codes: layer_a, head_a, layer_b, head_b, unique_positive_codes
    """
    with store.reader() as con:
        return {"scores": con.execute("SELECT level, layer, head, position, metric, score FROM circuit_patching "
                                      "WHERE circuit_run = ?", [circuit_run]).df(),
                "code_heads": con.execute("SELECT layer, head, unique_positive_codes AS score, in_reference "
                                          "FROM circuit_code_heads WHERE circuit_run = ?", [circuit_run]).df(),
                "code_pairs": con.execute("SELECT layer_a, head_a, layer_b, head_b, unique_positive_codes "
                                          "FROM circuit_code_pairs WHERE circuit_run = ? "
                                          "ORDER BY unique_positive_codes DESC LIMIT 20", [circuit_run]).df()}


def attribution_graphs(store: Store) -> pd.DataFrame:
    """Attribution graphs, oldest first: graph, model, prompt, target_token, target_logit, transcoders,
    n_kept_nodes, n_kept_edges, replacement_score, completeness_score, path (of its JSON, store-relative)."""
    with store.reader() as con:
        return con.execute("SELECT graph, model, prompt, target_token, target_logit, transcoders, n_kept_nodes, "
                           "n_kept_edges, replacement_score, completeness_score, path FROM circuit_graphs "
                           "ORDER BY created_at").df()


def graph_path(store: Store, graph: str) -> Path:
    """Where a stored graph's JSON is."""
    with store.reader() as con:
        row = con.execute("SELECT path FROM circuit_graphs WHERE graph = ?", [graph]).fetchone()
    if row is None:
        raise StoreError(f"No attribution graph '{graph}' in the store {store.root}.")
    return store.root / row[0]


def attribution_graph(store: Store, graph: str) -> dict:
    """A graph's JSON (circuit-tracer's node and link scheme), as `workbench circuit graph` wrote it."""
    with store.reader() as con:
        row = con.execute("SELECT path, prompt FROM circuit_graphs WHERE graph = ?", [graph]).fetchone()
        known = [] if row else [r[0] for r in con.execute("SELECT graph FROM circuit_graphs ORDER BY graph").fetchall()]
    if row is None:
        raise StoreError(f"No attribution graph '{graph}' in the store {store.root}. "
                         f"Known: {', '.join(known) or 'none (build one with `workbench circuit graph`)'}.")
    path = store.root / row[0]
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise StoreError(f"The file of attribution graph '{graph}' ({path}) cannot be read ({exc}). Build it again: "
                         f"`workbench circuit graph --prompt {row[1]!r} --transcoders ... --name {graph} "
                         f"--store {store.root}`.") from exc


# -- names for pickers ----------------------------------------------------------------------------

def complete_dictionary_names(store: Store) -> list[str]:
    """Names of the dictionaries that finished training (transcoders included), sorted."""
    return lookups.dictionary_names(store, complete=True)


def complete_transcoder_names(store: Store) -> list[str]:
    """Names of the finished dictionaries that map one hook to another (what attribution graphs need), sorted."""
    with store.reader() as con:
        return [d.name for d in read_all(con, DictionaryRecord, "hook_out IS NOT NULL AND status = 'complete'")]


def complete_codebook_names(store: Store) -> list[str]:
    """Names of the codebook sets that finished training, sorted."""
    return lookups.codebook_names(store, complete=True)


# -- stamps for loaded weights, and where a model lives ---------------------------------------------

def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return 0


def _artefact_folder(store: Store, record: DictionaryRecord | CodebookRecord | None) -> Path | None:
    return store.root / record.path if record is not None and record.path else None


def dictionary_weights_stamp(store: Store, name: str) -> int:
    """Changes when dictionary `name`'s weights file is rewritten (a resumed training run saves it again);
    0 if there is none yet. A loaded dictionary stays valid while this stays the same."""
    folder = _artefact_folder(store, lookups.dictionary(store, name))
    # Every weights file in the folder, whatever its layout (SAELens's name or ours before it): the store
    # layer names no dictionary file, and importing workbench.dictionaries would pull torch into every read.
    return 0 if folder is None else sum(_mtime(path) for path in folder.glob("*.safetensors"))


def codebook_weights_stamp(store: Store, name: str) -> int:
    """Changes when codebook set `name`'s final weights folder is rewritten; 0 if there is none yet."""
    folder = _artefact_folder(store, lookups.codebook(store, name))
    return 0 if folder is None else _mtime(folder / "final")


def model_dir(store: Store, model: str) -> Path:
    """The local folder of `model` (a registry name, a folder or a hub id) as this store keeps it:
    registry models are built once into the store's models/ folder, the way harvest found them."""
    from workbench.models import resolve_model_dir

    return resolve_model_dir(model, store.root / "models")
