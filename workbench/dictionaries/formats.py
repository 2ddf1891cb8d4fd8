"""Dictionaries written by other tools: which format a folder is in, and reading it into ours.

Formats, told apart by the files present (one module each converts exactly, and says which peer code
defines it):

| format | files | module |
|---|---|---|
| `saelens` | `cfg.json` + `sae_weights.safetensors` (also our own dictionary folders) | saelens_format.py |
| `gemmascope` | `params.npz` (Gemma Scope: JumpReLU SAEs and transcoders) | gemmascope_format.py |
| `gemmascope2` | `params.safetensors` (+ `config.json`) (Gemma Scope 2) | gemmascope_format.py |
| `circuit-tracer` | `config.yaml` + one file per layer (a transcoder set) | circuit_tracer_format.py |

A reader returns one `Converted` per dictionary (a transcoder set gives one per layer): our config and
state dict, plus what the files say about where it belongs (the peer's hook names, model, layer), which
`workbench import` uses as defaults. Nothing here touches a store.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from workbench.dictionaries.base import DictionaryConfig, SparseCoder, dictionary_from_state
from workbench.errors import DictionaryError

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".ckpt")
FORMAT_FILES = {
    "saelens": "cfg.json + sae_weights.safetensors",
    "gemmascope": "params.npz",
    "gemmascope2": "params.safetensors (+ config.json)",
    "circuit-tracer": "config.yaml + layer files",
}


@dataclass
class Converted:
    """One dictionary read from another tool's files, converted into ours."""

    config: DictionaryConfig
    tensors: dict[str, torch.Tensor]
    format: str
    hook: str | None = None  # the hook it reads, in the files' own spelling (TransformerLens or bridge names)
    hook_out: str | None = None  # transcoders: the hook it predicts
    model_name: str | None = None  # the model the files say it was trained on
    layer: int | None = None  # transcoder sets: its layer
    reads_hook_z: bool = False  # reads the attention heads side by side ([n_heads * d_head], head-major)
    folded: list[str] = field(default_factory=list)  # settings folded into the weights, for the record

    def build(self, source: Path | str) -> SparseCoder:
        return dictionary_from_state(self.config, self.tensors, source)


@dataclass(frozen=True)
class Hints:
    """What the files' origin says that the files may not: set for named sources (pretrained.NamedSource)."""

    repo_id: str | None = None  # the Hugging Face repo the folder came from
    path: str = ""  # the folder's path inside the repo
    model: str | None = None  # SAELens's directory: the model it was trained on
    config_overrides: dict = field(default_factory=dict)  # SAELens's directory: applied over cfg.json
    norm_scaling_factor: float | None = None  # SAELens's directory or the user: expected_average_only_in's factor


def detect_format(folder: Path) -> str:
    """The format of `folder` from the files present; refuses pickles and folders in no known format."""
    if not folder.is_dir():
        raise DictionaryError(
            f"{folder} is not a folder. Import the folder that holds the dictionary's files: "
            + "; ".join(f"{name}: {files}" for name, files in FORMAT_FILES.items())
            + "."
        )
    names = {p.name for p in folder.iterdir()}
    if "cfg.json" in names and ({"sae_weights.safetensors", "model.safetensors"} & names):
        return "saelens"
    if "params.npz" in names:
        return "gemmascope"
    if "params.safetensors" in names:
        return "gemmascope2"
    if "config.yaml" in names:
        return "circuit-tracer"
    if any(Path(n).suffix in PICKLE_SUFFIXES for n in names):
        raise DictionaryError(
            f"{folder} holds a pickle checkpoint; the workbench loads only safetensors and npz, because unpickling "
            "can run arbitrary code. Convert it with torch.load in a trusted session and save_file from safetensors."
        )
    raise DictionaryError(
        f"{folder} is in no format the workbench reads (files: {', '.join(sorted(names)) or 'none'}). It reads: "
        + "; ".join(f"{name}: {files}" for name, files in FORMAT_FILES.items())
        + "."
    )


def read(
    folder: Path,
    *,
    transcoder: bool | None = None,
    hints: Hints | None = None,
    layers: list[int] | None = None,
    fetch: Callable[[str], Path] | None = None,
) -> list[Converted]:
    """Every dictionary in `folder`, converted. `transcoder`: True when the caller knows it predicts another
    hook (--out); `layers`: which layers of a transcoder set; `fetch`: fetches an hf:// file a set refers to."""
    hints = hints or Hints()
    fmt = detect_format(folder)
    if layers is not None and fmt != "circuit-tracer":
        raise DictionaryError(f"--layers selects layers of a transcoder set; {folder} holds one {fmt} dictionary.")
    if fmt == "saelens":
        from workbench.dictionaries.saelens_format import read_saelens_folder

        return [read_saelens_folder(folder, hints)]
    if fmt == "gemmascope":
        from workbench.dictionaries.gemmascope_format import read_gemmascope_folder

        return [read_gemmascope_folder(folder, hints, transcoder)]
    if fmt == "gemmascope2":
        from workbench.dictionaries.gemmascope_format import read_gemmascope2_folder

        return [read_gemmascope2_folder(folder, hints, transcoder)]
    from workbench.dictionaries.circuit_tracer_format import read_transcoder_set

    return read_transcoder_set(folder, layers=layers, fetch=fetch)


# Peer hook names that parse_hook does not know, and the workbench hook they are. TransformerLens's
# `ln2.hook_normalized` is the MLP's input after its norm (Gemma Scope transcoders, circuit-tracer's
# Gemma config), which is our mlp.hook_in; circuit-tracer's newer configs say `mlp.hook_in` themselves.
PEER_HOOK_KINDS = {"ln2.hook_normalized": "mlp.hook_in"}
_BLOCK_HOOK = re.compile(r"^blocks\.(\d+)\.(.+)$")


def workbench_hook_spelling(peer: str) -> str:
    """A peer's hook name spelt so that hooks.parse_hook reads it (it still checks the name and the layer)."""
    match = _BLOCK_HOOK.match(peer.strip())
    if match and match.group(2) in PEER_HOOK_KINDS:
        return f"blocks.{match.group(1)}.{PEER_HOOK_KINDS[match.group(2)]}"
    return peer.strip()
