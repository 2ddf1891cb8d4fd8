"""`workbench export circuit-tracer`: write stored transcoders in circuit-tracer's own formats.

A transcoder set (one per-layer transcoder for every layer) becomes config.yaml plus layer_{i}.safetensors; a
cross-layer transcoder becomes circuit-tracer's W_enc_{i}/W_dec_{i} files. The writers and the format notes are in
dictionaries/circuit_tracer_format.py, next to the reader that `workbench import` uses, so both directions are
tested against each other and against circuit-tracer's own loaders.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from workbench.errors import DictionaryError
from workbench.store import Store, lookups


@dataclass
class CircuitTracerExportConfig:
    store: str
    """The store directory."""
    out: str
    """The folder to write (created; must be empty or absent)."""
    dictionaries: list[str] = field(default_factory=lambda: ["all"])
    """Transcoders to export: one per layer from layer 0, or `all` (the store's per-layer transcoders of one
    model), or one cross-layer transcoder."""


@dataclass
class CircuitTracerExportResult:
    folder: Path
    kind: str  # transcoder_set | cross_layer_transcoder
    layers: int
    files: list[str]


def run_export_circuit_tracer(config: CircuitTracerExportConfig) -> CircuitTracerExportResult:
    """Write the transcoders as circuit-tracer's load_transcoder_set or load_clt reads them."""
    from workbench.circuits.attribution import load_transcoders
    from workbench.circuits.replacement import CLTReplacement
    from workbench.dictionaries.circuit_tracer_format import write_clt, write_transcoder_set

    store = Store.open_existing(config.store)
    folder = Path(config.out)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise DictionaryError(f"--out {folder} exists and is not an empty folder; give a new one.")
    loaded = load_transcoders(store, config.dictionaries)
    scan = "-".join(loaded.distinct_names) if len(loaded.distinct_names) < 4 else f"{loaded.model}-transcoders"
    staging = folder.with_name(folder.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        if isinstance(loaded.replacement, CLTReplacement):
            run = lookups.run(store, lookups.completed_dictionary(store, loaded.distinct_names[0]).run)
            write_clt(staging, loaded.replacement.clt, loaded.model, scan, run.n_layers)
            kind = "cross_layer_transcoder"
        else:
            write_transcoder_set(staging, loaded.replacement.coders, loaded.model, scan)
            kind = "transcoder_set"
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # a refused or interrupted export leaves nothing behind
        raise
    if folder.exists():
        folder.rmdir()
    staging.replace(folder)  # whole or not at all
    return CircuitTracerExportResult(folder, kind, len(loaded.names), sorted(p.name for p in folder.iterdir()))
