"""Pretrained dictionaries by name: a SAELens release and id, or a Hugging Face repo and path.

`workbench import` takes three kinds of SOURCE:

- a local folder (kept as it is);
- `RELEASE/ID`, a SAELens release and SAE id (`gemma-scope-2-270m-pt-res/layer_12_width_16k_l0_medium`).
  The release is everything before the first '/', the id everything after it, so ids that contain '/'
  (`gemma-scope-2b-pt-transcoders/layer_0/width_16k/average_l0_76`) work; no release name has one. It is
  resolved offline through SAELens's pretrained directory (sae_lens/pretrained_saes.yaml) to a repo and a
  path, with the directory's converter name, model, config overrides and norm scaling factor;
- `hf://OWNER/REPO[/PATH][?revision=REV]`, a folder of a Hugging Face repo (circuit-tracer's URI spelling).

Named sources are fetched with huggingface_hub's `snapshot_download`, from the local cache first, so a
cached copy works offline. When neither the cache nor the network has them, the error says how to fetch
them on a machine with network and import the copied folder.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from workbench.errors import DictionaryError

HF_PREFIX = "hf://"

# SAELens converters whose files the workbench reads itself (dictionaries/formats.py); any other release is
# refused with SAELens's own conversion as the way round.
SUPPORTED_CONVERTERS = {
    None: "SAELens folder (cfg.json + sae_weights.safetensors)",
    "sae_lens": "SAELens folder (cfg.json + sae_weights.safetensors)",
    "gemma_2": "Gemma Scope params.npz",
    "gemma_2_transcoder": "Gemma Scope transcoder params.npz",
    "gemma_3": "Gemma Scope 2 params.safetensors + config.json",
}


@dataclass(frozen=True)
class NamedSource:
    """A dictionary on the Hugging Face Hub, and what SAELens's directory says about it."""

    repo_id: str
    path: str  # inside the repo, without a leading or trailing '/'; '' for the whole repo
    revision: str | None = None
    release: str | None = None  # SAELens release and id, when named that way
    sae_id: str | None = None
    converter: str | None = None  # SAELens's conversion_func for the release (None: a SAELens folder)
    model: str | None = None  # the model the directory says it was trained on
    norm_scaling_factor: float | None = None  # the directory's factor for normalize_activations
    config_overrides: dict[str, Any] = field(default_factory=dict)  # what SAELens applies over cfg.json

    def __str__(self) -> str:
        if self.release is not None:
            return f"{self.release}/{self.sae_id}"
        revision = f"?revision={self.revision}" if self.revision else ""
        return f"{HF_PREFIX}{self.repo_id}{'/' + self.path if self.path else ''}{revision}"


def resolve(source: str) -> Path | NamedSource:
    """A local folder or file as a Path, else the named source `source` spells; refused if it is neither."""
    if source.startswith(HF_PREFIX):
        return parse_hf_uri(source)
    local = Path(source).expanduser()
    if local.exists():
        return local
    release, _, sae_id = source.partition("/")
    if sae_id:
        directory = _directory(source)
        if release in directory:
            return from_release(release, sae_id, directory)
        close = difflib.get_close_matches(release, list(directory), n=3)
        hint = f" Close release names: {', '.join(close)}." if close else ""
    else:
        hint = ""
    raise DictionaryError(
        f"'{source}' is not a local folder, not a SAELens release/id, and not an hf:// address.{hint} "
        "SOURCE is one of: a folder; RELEASE/ID from SAELens's pretrained directory "
        "(e.g. gemma-scope-2-270m-pt-res/layer_12_width_16k_l0_medium); or hf://OWNER/REPO/PATH "
        "(e.g. hf://google/gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71)."
    )


def parse_hf_uri(uri: str) -> NamedSource:
    """hf://OWNER/REPO[/PATH][?revision=REV] as a NamedSource."""
    parsed = urlparse(uri)
    parts = [p for p in parsed.path.split("/") if p]
    if parsed.scheme != "hf" or not parsed.netloc or not parts:
        raise DictionaryError(f"'{uri}' is not an hf:// address: write hf://OWNER/REPO[/PATH][?revision=REV].")
    revision = parse_qs(parsed.query).get("revision", [None])[0] or None
    return NamedSource(repo_id=f"{parsed.netloc}/{parts[0]}", path="/".join(parts[1:]), revision=revision)


def from_release(release: str, sae_id: str, directory: dict | None = None) -> NamedSource:
    """Resolve a SAELens release and SAE id to its repo and path, offline (SAELens's pretrained directory)."""
    directory = directory if directory is not None else _directory(f"{release}/{sae_id}")
    if release not in directory:
        raise DictionaryError(f"SAELens has no release '{release}'.")
    entry = directory[release]
    if sae_id not in entry.saes_map:
        close = difflib.get_close_matches(sae_id, list(entry.saes_map), n=5)
        raise DictionaryError(
            f"SAELens release '{release}' has no SAE id '{sae_id}'. "
            + (
                f"Close ids: {', '.join(close)}."
                if close
                else f"It has {len(entry.saes_map)} ids, e.g. {next(iter(entry.saes_map))}."
            )
        )
    overrides = dict(entry.config_overrides or {})
    return NamedSource(
        repo_id=entry.repo_id,
        path=str(entry.saes_map[sae_id]).strip("/"),
        release=release,
        sae_id=sae_id,
        converter=entry.conversion_func,
        model=entry.model,
        norm_scaling_factor=entry.norm_scaling_factor.get(sae_id),
        config_overrides=overrides,
    )


def check_supported(named: NamedSource, store: str = "STORE") -> None:
    """Refuse, before any download, a release whose files need a SAELens converter the workbench lacks."""
    if named.converter in SUPPORTED_CONVERTERS:
        return
    supported = sorted({v for v in SUPPORTED_CONVERTERS.values()})
    raise DictionaryError(
        f"SAELens loads '{named}' with its '{named.converter}' converter, which the workbench does not read "
        f"(it reads: {'; '.join(supported)}). Convert it with SAELens on a machine with network, then import the "
        "folder it writes:\n"
        f"  python -c \"from sae_lens import SAE; SAE.from_pretrained('{named.release}', '{named.sae_id}')"
        ".save_model('DIR')\"\n"
        f"  workbench import DIR --store {store} [your other options]"
    )


def download(named: NamedSource, store: str = "STORE", only: list[str] | None = None) -> Path:
    """The local copy of `named`'s path: from the Hugging Face cache, else downloaded; a DictionaryError that
    says how to fetch it elsewhere when neither works. `only`: file patterns within the path (a transcoder
    set's config and chosen layers), instead of all of it."""
    from huggingface_hub import snapshot_download

    base = f"{named.path}/" if named.path else ""
    patterns = [base + p for p in only] if only else [named.path, base + "*"] if named.path else None
    error: Exception | None = None
    for cached_only in (True, False):
        try:
            root = snapshot_download(
                named.repo_id, revision=named.revision, allow_patterns=patterns, local_files_only=cached_only
            )
        except Exception as exc:  # offline, not cached, gated, missing: all end in the same advice
            error = exc
            continue
        local = Path(root) / named.path
        if local.exists():
            return local
        error = FileNotFoundError(f"no '{named.path}' in the snapshot of {named.repo_id}")
    raise DictionaryError(fetch_instructions(named, store, error, patterns))


def fetch_instructions(
    named: NamedSource, store: str, error: Exception | None, patterns: list[str] | None = None
) -> str:
    reason = f" ({type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''})" if error else ""
    wanted = [p for p in (patterns or []) if p != named.path] or ([f"{named.path}/*"] if named.path else [])
    include = "".join(f" --include '{p}'" for p in wanted)
    revision = f" --revision {named.revision}" if named.revision else ""
    target = f"DIR/{named.path}" if named.path else "DIR"
    return (
        f"Could not get '{named.path or '(the whole repo)'}' of the Hugging Face repo {named.repo_id}"
        f"{' (SAELens ' + str(named) + ')' if named.release else ''}: not in the local cache, and the download "
        f"failed{reason}. On a machine with network, run\n"
        f"  huggingface-cli download {named.repo_id}{include}{revision} --local-dir DIR\n"
        f"copy DIR here, then run\n"
        f"  workbench import {target} --store {store} [your other options]"
    )


def _directory(source: str) -> dict:
    try:
        from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory
    except ImportError:
        raise DictionaryError(
            f"'{source}' is not a local folder. Release names need sae-lens's pretrained directory "
            "(pip install -e '.[saelens]'); without it, give the files' address as hf://OWNER/REPO/PATH."
        ) from None
    return get_pretrained_saes_directory()
