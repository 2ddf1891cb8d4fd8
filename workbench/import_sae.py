"""Register a dictionary written by SAELens (or by another workbench store) in a store.

The folder is converted exactly (see dictionaries/saelens_format.py), checked against the
width of the hook it is meant for, and saved into <store>/dictionaries/<name>/, after which
`workbench eval` and `workbench encode` treat it like a dictionary trained here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from workbench.dictionaries import load_dictionary
from workbench.dictionaries.saelens_format import saelens_metadata
from workbench.errors import DictionaryError
from workbench.provenance import git_commit, package_version
from workbench.store import Store, check_run_name, lookups, make_run_name, records
from workbench.store.records import DictionaryRecord


@dataclass
class ImportConfig:
    store: str
    """The store directory."""
    source: str
    """The dictionary folder (cfg.json + sae_weights.safetensors)."""
    hook: str
    """The hook it encodes (canonical or legacy name)."""
    hook_out: str | None = None
    """Transcoders: the hook it predicts."""
    run: str | None = None
    """The run whose activations it reads (default: the only run with the hook)."""
    name: str | None = None
    """Name in the store (default: derived from the family, hook and width)."""


@dataclass
class ImportResult:
    dictionary: DictionaryRecord
    """The imported dictionary's catalog record."""


def run_import(config: ImportConfig) -> ImportResult:
    """Convert a SAELens-format folder, check it against the hook's width, and register it as complete."""
    store = Store.open_existing(config.store)
    source = config.source
    model = load_dictionary(source)  # refuses pickles and unknown architectures before anything is written
    dictionary_config = model.config
    hook = lookups.canonical_hook(store, config.hook)
    hook_out = lookups.canonical_hook(store, config.hook_out) if config.hook_out else None
    if dictionary_config.transcoder != (hook_out is not None):
        raise DictionaryError(
            f"{source} is "
            + (
                "a transcoder: give --out, the hook it predicts"
                if dictionary_config.transcoder
                else "an SAE: leave out --out"
            )
            + "."
        )
    run = lookups.run_with_hook(store, hook, config.run)
    widths = lookups.hook_widths(store, run)
    for role, point, width in (("input", hook, dictionary_config.d_in), ("output", hook_out, dictionary_config.d_out)):
        if point is None:
            continue
        if point not in widths:
            raise DictionaryError(
                f"Run '{run}' has no hook '{point}'; harvest it first (stored: {', '.join(sorted(widths))})."
            )
        if widths[point] != width:
            raise DictionaryError(
                f"Dimension mismatch: the dictionary's {role} width is {width}, but '{point}' in run "
                f"'{run}' has width {widths[point]}. Was it trained on another model or hook?"
            )
    name = check_run_name(
        config.name or make_run_name("imported", dictionary_config.arch, hook, str(dictionary_config.n_latents))
    )
    if lookups.dictionary(store, name) is not None:
        raise DictionaryError(f"The store already has a dictionary '{name}'; choose another --name.")
    folder = store.root / "dictionaries" / name
    model.save(folder, saelens_metadata(lookups.run(store, run).model, run, hook, hook_out))
    settings = {"imported_from": str(Path(source).resolve()), "run": run, "hook": hook, "hook_out": hook_out}
    record = DictionaryRecord(
        name=name,
        arch=dictionary_config.arch,
        run=run,
        hook=hook,
        hook_out=hook_out,
        d_in=dictionary_config.d_in,
        d_out=dictionary_config.output_width,
        n_latents=dictionary_config.n_latents,
        k=dictionary_config.k,
        path=folder.relative_to(store.root).as_posix(),
        status="complete",
        config=settings,
        package_version=package_version(),
        git_commit=git_commit(),
    )
    with store.transaction() as con:
        records.insert(con, record)
    return ImportResult(lookups.completed_dictionary(store, name))
