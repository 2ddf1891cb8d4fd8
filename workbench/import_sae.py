"""Register a dictionary written by SAELens (or by another workbench store) in a store.

The folder is converted exactly (see dictionaries/saelens_format.py), checked against the
width of the hook it is meant for, and saved into <store>/dictionaries/<name>/, after which
`workbench eval` and `workbench encode` treat it like a dictionary trained here.
"""

from __future__ import annotations

import json
from pathlib import Path

from workbench.dictionaries import load_dictionary
from workbench.dictionaries.base import DictionaryError


def import_dictionary(store_path: str | Path, source: str | Path, hook: str, hook_out: str | None = None,
                      run: str | None = None, name: str | None = None) -> str:
    from workbench.provenance import git_commit, package_version
    from workbench.store import Store, check_run_name, make_run_name
    from workbench.train import canonical_hooks, resolve_run, saelens_metadata

    store = Store.open_existing(store_path)
    model = load_dictionary(source)  # refuses pickles and unknown architectures before anything is written
    config = model.config
    hook, hook_out = canonical_hooks(store, hook, hook_out)
    if config.transcoder != (hook_out is not None):
        raise DictionaryError(f"{source} is {'a transcoder: give --out, the hook it predicts' if config.transcoder else 'an SAE: leave out --out'}.")
    run = resolve_run(store, hook, run)
    with store.reader() as con:
        widths = dict(con.execute("SELECT hook, d FROM hook_points WHERE run = ?", [run]).fetchall())
    for role, point, width in (("input", hook, config.d_in), ("output", hook_out, config.d_out)):
        if point is None:
            continue
        if point not in widths:
            raise DictionaryError(f"Run '{run}' has no hook '{point}'; harvest it first (stored: {', '.join(sorted(widths))}).")
        if widths[point] != width:
            raise DictionaryError(f"Dimension mismatch: the dictionary's {role} width is {width}, but '{point}' in run "
                                  f"'{run}' has width {widths[point]}. Was it trained on another model or hook?")
    name = check_run_name(name or make_run_name("imported", config.arch, hook, str(config.n_latents)))
    with store.reader() as con:
        if con.execute("SELECT 1 FROM dictionaries WHERE name = ?", [name]).fetchone():
            raise DictionaryError(f"The store already has a dictionary '{name}'; choose another --name.")
    folder = store.root / "dictionaries" / name
    model.save(folder, saelens_metadata(store, run, hook, hook_out))
    settings = {"imported_from": str(Path(source).resolve()), "run": run, "hook": hook, "hook_out": hook_out}
    with store.transaction() as con:
        con.execute(
            "INSERT INTO dictionaries VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'complete', 0, 0, NULL, NULL, NULL, NULL, ?, ?, ?, now(), now())",
            [name, config.arch, run, hook, hook_out, config.d_in, config.d_out, config.n_latents, config.k,
             str(folder.relative_to(store.root)), json.dumps(settings), package_version(), git_commit()])
    return name
