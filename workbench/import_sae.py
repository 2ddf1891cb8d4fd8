"""Register dictionaries trained elsewhere in a store: from a local folder, by SAELens release/id, or hf://.

The source is resolved (pretrained.py: a named source is fetched from the Hugging Face cache or the
Hub), its format told from its files and converted exactly (dictionaries/formats.py and one module per
format), each dictionary checked against the width of the hook it is meant for (the hook's stored width),
and saved into <store>/dictionaries/<name>/, after which `workbench eval` and `workbench encode` treat it
like a dictionary trained here. A circuit-tracer transcoder set registers one transcoder per layer.
Everything is checked before anything is written.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, replace
from pathlib import Path

from workbench import pretrained
from workbench.dictionaries import SparseCoder
from workbench.dictionaries.formats import Converted, Hints, read, workbench_hook_spelling
from workbench.dictionaries.saelens_format import saelens_metadata
from workbench.errors import DictionaryError, UnknownHookError
from workbench.provenance import git_commit, package_version
from workbench.store import Store, check_run_name, lookups, make_run_name, records
from workbench.store.records import DictionaryRecord


@dataclass
class ImportConfig:
    store: str
    """The store directory."""
    source: str
    """What to import: a local folder; RELEASE/ID, a SAELens release and SAE id (the release ends at the first
    '/'); or hf://OWNER/REPO[/PATH][?revision=REV]. Formats and examples below."""
    hook: str | None = None
    """The hook it encodes, canonical or legacy name (default: the hook its files or SAELens's directory name).
    Transcoder sets: the hook within each layer, e.g. mlp.hook_in."""
    hook_out: str | None = None
    """Transcoders: the hook it predicts (default: the one its files name). Transcoder sets: the hook within each
    layer, e.g. mlp.hook_out."""
    run: str | None = None
    """The run whose activations it reads (default: the only run with the hook)."""
    name: str | None = None
    """Name in the store (default: derived from the family, hook and width). Transcoder sets: a prefix, layer L
    is <name>-L<L> (default prefix: imported-<the set's folder or repo name>)."""
    layers: list[int] | None = None
    """Transcoder sets: the layers to import, comma-separated (default: every layer of the set)."""
    norm_scaling_factor: float | None = None
    """SAELens dictionaries with normalize_activations='expected_average_only_in': the factor their inputs were
    multiplied by (default: SAELens's directory entry, or activation_scaler.json beside the weights)."""


@dataclass
class ImportResult:
    dictionaries: list[DictionaryRecord]
    """The imported dictionaries' catalog records: one, or one per layer of a transcoder set."""
    folder: str
    """The folder the files were read from (for a named source, its copy in the Hugging Face cache)."""
    format: str
    """The files' format: saelens, gemmascope, gemmascope2 or circuit-tracer."""

    @property
    def dictionary(self) -> DictionaryRecord:
        """The imported dictionary (the first layer's, for a set)."""
        return self.dictionaries[0]


@dataclass
class _Plan:
    name: str
    item: Converted
    run: str
    hook: str
    hook_out: str | None


def run_import(config: ImportConfig) -> ImportResult:
    """Resolve the source, convert every dictionary in it, check each against its hook's width, register them."""
    store = Store.open_existing(config.store)
    resolved = pretrained.resolve(config.source)
    origin: dict = {}
    if isinstance(resolved, pretrained.NamedSource):
        pretrained.check_supported(resolved, config.store)
        # --layers means a transcoder set: its config and those layers' files are enough
        only = ["*.yaml", *(f"layer_{layer}.*" for layer in config.layers)] if config.layers else None
        folder = pretrained.download(resolved, config.store, only)
        hints = Hints(
            repo_id=resolved.repo_id,
            path=resolved.path,
            model=resolved.model,
            config_overrides=resolved.config_overrides,
            norm_scaling_factor=resolved.norm_scaling_factor,
        )
        origin = {"imported_from": str(resolved), "repo_id": resolved.repo_id, "path": resolved.path}
        origin |= {"revision": resolved.revision} if resolved.revision else {}
        label = resolved.repo_id.split("/")[-1] + (f"-{resolved.path.replace('/', '-')}" if resolved.path else "")
    else:
        folder, hints = resolved, Hints()
        origin = {"imported_from": str(folder.resolve())}
        label = folder.resolve().name
    if config.norm_scaling_factor is not None:
        hints = replace(hints, norm_scaling_factor=config.norm_scaling_factor)

    def fetch(uri: str) -> Path:  # a file that a transcoder set's config names in another repo
        return pretrained.download(pretrained.parse_hf_uri(uri), config.store)

    converted = read(
        folder, transcoder=True if config.hook_out else None, hints=hints, layers=config.layers, fetch=fetch
    )
    prefix = config.name or make_run_name("imported", label)
    plans = [_plan(store, item, config, folder, prefix) for item in converted]
    taken = [p.name for p in plans if lookups.dictionary(store, p.name) is not None]
    if taken:
        raise DictionaryError(
            f"The store already has {'a dictionary' if len(taken) == 1 else 'dictionaries'} "
            f"{', '.join(repr(n) for n in taken)}; choose another --name."
        )
    written: list[Path] = []
    try:
        rows = []
        for plan in plans:  # one dictionary in memory at a time beside the converted tensors
            target = store.root / "dictionaries" / plan.name
            written.append(target)
            model = plan.item.build(folder)
            model.save(target, saelens_metadata(lookups.run(store, plan.run).model, plan.run, plan.hook, plan.hook_out))
            rows.append(_record(plan, model, target.relative_to(store.root).as_posix(), origin))
            del model
        with store.transaction() as con:
            for row in rows:
                records.insert(con, row)
    except BaseException:
        for target in written:
            shutil.rmtree(target, ignore_errors=True)
        raise
    return ImportResult([lookups.completed_dictionary(store, p.name) for p in plans], str(folder), converted[0].format)


def _plan(store: Store, item: Converted, config: ImportConfig, folder: Path, prefix: str) -> _Plan:
    """Hooks, run and name for one converted dictionary, checked against the store; nothing written."""
    dictionary_config = item.config
    what = f"{folder}" + (f" (layer {item.layer})" if item.layer is not None else "")
    hook = _hook(store, config.hook, item.hook, item.layer, what, "--hook")
    if dictionary_config.transcoder:
        hook_out: str | None = _hook(store, config.hook_out, item.hook_out, item.layer, what, "--out")
    elif config.hook_out:
        raise DictionaryError(f"{what} is an SAE: leave out --out.")
    else:
        hook_out = None
    if item.reads_hook_z and not hook.endswith(".attn.hook_z"):
        raise DictionaryError(
            f"{what} reads the attention heads side by side (SAELens's hook_z), so it belongs on "
            f"blocks.L.attn.hook_z, not '{hook}'."
        )
    run = lookups.run_with_hook(store, hook, config.run)
    widths = lookups.hook_widths(store, run)
    trained_on = f" It was trained on {item.model_name}." if item.model_name else ""
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
                f"'{run}' has width {widths[point]}. Was it trained on another model or hook?{trained_on}"
            )
    if item.layer is not None:
        name = f"{prefix}-L{item.layer}"
    else:
        name = config.name or make_run_name("imported", dictionary_config.arch, hook, str(dictionary_config.n_latents))
    return _Plan(check_run_name(name), item, run, hook, hook_out)


def _hook(store: Store, given: str | None, peer: str | None, layer: int | None, what: str, flag: str) -> str:
    """The canonical hook: the user's (within the layer, for a set) or else the one the files name."""
    if given is not None and layer is not None:
        if given.startswith("blocks."):
            raise DictionaryError(
                f"For a transcoder set, {flag} names the hook within each layer (e.g. mlp.hook_in), not '{given}'."
            )
        given = f"blocks.{layer}.{given}"
    if given is not None:
        return lookups.canonical_hook(store, given)
    if peer is None:
        raise DictionaryError(
            f"{what} does not say which hook it {'reads' if flag == '--hook' else 'predicts'}; give {flag}."
        )
    try:
        return lookups.canonical_hook(store, workbench_hook_spelling(peer))
    except UnknownHookError as error:
        raise DictionaryError(
            f"{what} names its hook '{peer}', which is not a hook of this store's model ({error}) Give {flag}."
        ) from None


def _record(plan: _Plan, model: SparseCoder, path: str, origin: dict) -> DictionaryRecord:
    config = model.config
    settings = origin | {"format": plan.item.format, "run": plan.run, "hook": plan.hook, "hook_out": plan.hook_out}
    if plan.item.model_name:
        settings["trained_on"] = plan.item.model_name
    if plan.item.layer is not None:
        settings["layer"] = plan.item.layer
    if plan.item.folded:
        settings["folded"] = plan.item.folded
    return DictionaryRecord(
        name=plan.name,
        arch=config.arch,
        run=plan.run,
        hook=plan.hook,
        hook_out=plan.hook_out,
        d_in=config.d_in,
        d_out=config.output_width,
        n_latents=config.n_latents,
        k=config.k,
        path=path,
        status="complete",
        config=settings,
        package_version=package_version(),
        git_commit=git_commit(),
    )
