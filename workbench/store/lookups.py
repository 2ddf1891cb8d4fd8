"""The questions the rest of the workbench asks the catalog, each answered once, with an error that says what to do.

    run(store, name)                    a run's record, or an error listing the known runs
    run_with_hook(store, hook, run)     the run to read a hook from (the only one that has it, or the named one)
    hook_widths(store, run)             {hook: width} for a run's hook points
    n_layers(store)                     the deepest model in the store (for parsing hook names)
    completed_dictionary(store, name)   a finished dictionary's record, or why it is not usable
    dictionary(store, name)             any dictionary's record, or None
    dictionary_names(store, complete)   names, for pickers and messages
    completed_codebook(store, name)     finished codebooks' record, or why they are not usable
    codebook(store, name)               any codebooks' record, or None

They read through short read-only connections (catalog.py), so they work while a writer commits.
"""

from __future__ import annotations

from workbench.errors import CodebookError, DictionaryError, StoreError
from workbench.store.catalog import Store
from workbench.store.records import CodebookRecord, DictionaryRecord, HookPointRecord, RunRecord, read_all, read_one


def run(store: Store, name: str) -> RunRecord:
    """The run's record, or an error naming the runs there are."""
    with store.reader() as con:
        found = read_one(con, RunRecord, run=name)
        known = [] if found else [r.run for r in read_all(con, RunRecord)]
    if found is None:
        raise StoreError(f"No run '{name}' in the store. Known: {', '.join(known) or 'none (run `workbench harvest`)'}.")
    return found


def run_with_hook(store: Store, hook: str, run: str | None = None) -> str:
    """The run to read `hook` from: `run` when given, else the only run that harvested the hook."""
    if run is not None:
        return run
    with store.reader() as con:
        runs = sorted({point.run for point in read_all(con, HookPointRecord, hook=hook)})
    if len(runs) == 1:
        return runs[0]
    if not runs:
        raise DictionaryError(f"No run in {store.root} has hook '{hook}'. Harvest it first, e.g. "
                              f"`workbench harvest --model smollm2-135m --hooks {hook} --store {store.root}`.")
    raise DictionaryError(f"Several runs have hook '{hook}' ({', '.join(runs)}); choose one with --run.")


def hook_widths(store: Store, run: str) -> dict[str, int]:
    with store.reader() as con:
        return {point.hook: point.d for point in read_all(con, HookPointRecord, run=run)}


def n_layers(store: Store) -> int:
    """The layer count of the deepest model in the store (1 for an empty store): hook names are checked against it."""
    with store.reader() as con:
        return max((r.n_layers for r in read_all(con, RunRecord)), default=1)


def dictionary(store: Store, name: str) -> DictionaryRecord | None:
    with store.reader() as con:
        return read_one(con, DictionaryRecord, name=name)


def dictionary_names(store: Store, complete: bool = True) -> list[str]:
    where = "status = 'complete'" if complete else "true"
    with store.reader() as con:
        return [record.name for record in read_all(con, DictionaryRecord, where)]


def completed_dictionary(store: Store, name: str) -> DictionaryRecord:
    """A finished dictionary's record, or an error that says what to do."""
    found = dictionary(store, name)
    if found is None:
        known = dictionary_names(store, complete=False)
        raise DictionaryError(f"No dictionary '{name}' in the store. Known: {', '.join(known) or 'none (train one first)'}.")
    if found.status != "complete":
        raise DictionaryError(f"Dictionary '{name}' is still training; run the same `workbench train` command to finish it.")
    return found


def codebook(store: Store, name: str) -> CodebookRecord | None:
    with store.reader() as con:
        return read_one(con, CodebookRecord, name=name)


def codebook_names(store: Store, complete: bool = True) -> list[str]:
    where = "status = 'complete'" if complete else "true"
    with store.reader() as con:
        return [record.name for record in read_all(con, CodebookRecord, where)]


def completed_codebook(store: Store, name: str) -> CodebookRecord:
    """Finished codebooks' record, or an error that says what to do."""
    found = codebook(store, name)
    if found is None:
        known = codebook_names(store, complete=False)
        raise CodebookError(f"No codebooks '{name}' in the store. Known: "
                            f"{', '.join(known) or 'none (run `workbench codebook train`)'}.")
    if found.status != "complete":
        raise CodebookError(f"Codebooks '{name}' are still training; run the same `workbench codebook train` command "
                            "to finish them.")
    return found


# -- runs and dictionaries


def canonical_hook(store: Store, hook: str) -> str:
    """The canonical name of `hook` (legacy aliases accepted), checked against the deepest model in the store."""
    from workbench.hooks import parse_hook

    return parse_hook(hook, n_layers(store)).name
