"""circuit-tracer transcoder sets: a `config.yaml` and one file per layer, each read as one of our transcoders.

Read as circuit-tracer reads them (circuit_tracer/utils/hf_utils.py: load_transcoders,
resolve_transcoder_paths; circuit_tracer/transcoder/single_layer_transcoder.py: SingleLayerTranscoder,
load_relu_transcoder, load_gemma_scope_transcoder, load_gemma_scope_2_transcoder, load_transcoder_set):

- config.yaml: `model_kind: transcoder_set` (a `cross_layer_transcoder` is refused: it writes into every
  later layer), `model_name`, `feature_input_hook` and `feature_output_hook` (TransformerLens hook names
  within a block, e.g. `mlp.hook_in`, `ln2.hook_normalized`, `hook_mlp_out`), and `transcoders`: a list of
  files or hf:// URIs, the i-th for layer i, or absent, meaning the folder's layer_{i}.safetensors. Older
  configs list entries `{id, layer, filepath}`.
- a layer's safetensors (their SingleLayerTranscoder): W_enc [d_transcoder, d_model], used as
  F.linear(x, W_enc, b_enc) = x @ W_enc.T + b_enc (no b_dec subtracted); W_dec [d_transcoder, d_out]; b_enc;
  b_dec; an optional `activation_function.threshold` (JumpReLU: pre * (pre > threshold); without it ReLU);
  an optional W_skip [d_out, d_in], added as x @ W_skip.T. circuit-tracer before its lazy loading (mid 2025)
  stored W_dec transposed, [d_out, d_transcoder], and transposed it when loading; where the shapes tell the
  two apart they decide, a square W_dec follows the config's style (old-style entries: transposed).
- a layer's params.npz (Gemma Scope transcoders) or Gemma Scope 2 safetensors (w_enc, w_dec, threshold):
  read as gemmascope_format.py reads them.

Ours computes relu(pre) * (pre > threshold), which equals theirs wherever the threshold is >= 0; a negative
threshold (theirs would let negative values through) is refused. Each layer becomes a JumpReLU transcoder.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file

from workbench.dictionaries.base import DictionaryConfig
from workbench.dictionaries.formats import Converted
from workbench.dictionaries.gemmascope_format import NAMES as GEMMA_NAMES
from workbench.dictionaries.gemmascope_format import convert_jumprelu, load_npz
from workbench.errors import DictionaryError

ACTIVATIONS = (None, "relu", "jump_relu", "jumprelu")
_LAYER_FILE = re.compile(r"^layer_(\d+)\.safetensors$")


def read_transcoder_set(
    folder: Path, *, layers: list[int] | None = None, fetch: Callable[[str], Path] | None = None
) -> list[Converted]:
    """One Converted per layer of the set in `folder` (only `layers` when given)."""
    import yaml

    try:
        cfg = yaml.safe_load((folder / "config.yaml").read_text()) or {}
    except yaml.YAMLError as error:
        raise DictionaryError(f"{folder / 'config.yaml'} is not valid YAML ({error}).") from None
    if not isinstance(cfg, dict):
        raise DictionaryError(f"{folder / 'config.yaml'} is not a circuit-tracer config (a mapping of settings).")
    kind = cfg.get("model_kind", "transcoder_set")
    if kind != "transcoder_set":
        raise DictionaryError(
            f"{folder}: circuit-tracer model_kind {kind!r}; the workbench imports transcoder sets (one transcoder "
            "per layer, model_kind transcoder_set). A cross-layer transcoder writes into every later layer."
        )
    if cfg.get("activation") not in ACTIVATIONS:
        raise DictionaryError(
            f"{folder}: activation {cfg['activation']!r} is not supported (ReLU and JumpReLU are; circuit-tracer's "
            "TopK keeps negative values, which ours does not)."
        )
    missing = [key for key in ("feature_input_hook", "feature_output_hook") if not cfg.get(key)]
    if missing:
        raise DictionaryError(f"{folder / 'config.yaml'} lacks {', '.join(missing)}.")
    files, old_style = _layer_files(folder, cfg)
    if not files:
        raise DictionaryError(f"{folder}: the config lists no transcoders and there are no layer_*.safetensors files.")
    chosen = sorted(files) if layers is None else sorted(set(layers))
    absent = [layer for layer in chosen if layer not in files]
    if absent:
        raise DictionaryError(
            f"{folder}: the set has no layer(s) {', '.join(map(str, absent))} (it has {min(files)}..{max(files)})."
        )
    converted = []
    for layer in chosen:
        path = _local_file(folder, files[layer], fetch)
        config, tensors = convert_layer(path, old_style=old_style)
        converted.append(
            Converted(
                config,
                tensors,
                "circuit-tracer",
                hook=f"blocks.{layer}.{cfg['feature_input_hook']}",
                hook_out=f"blocks.{layer}.{cfg['feature_output_hook']}",
                model_name=cfg.get("model_name"),
                layer=layer,
            )
        )
    return converted


def _layer_files(folder: Path, cfg: dict) -> tuple[dict[int, str], bool]:
    """Layer -> file (a path, relative to the folder, or an hf:// URI), and whether the config is old-style."""
    entries = cfg.get("transcoders")
    if entries is None:
        found = {int(m.group(1)): p.name for p in folder.iterdir() if (m := _LAYER_FILE.match(p.name))}
        return found, False
    if not isinstance(entries, list):
        raise DictionaryError(f"{folder / 'config.yaml'}: 'transcoders' must be a list.")
    if entries and isinstance(entries[0], dict):
        try:
            return {int(e["layer"]): str(e["filepath"]) for e in entries}, True
        except (KeyError, TypeError, ValueError):
            raise DictionaryError(
                f"{folder / 'config.yaml'}: each transcoder entry needs a layer and a filepath."
            ) from None
    return {i: str(entry) for i, entry in enumerate(entries)}, False


def _local_file(folder: Path, reference: str, fetch: Callable[[str], Path] | None) -> Path:
    """The file a set's entry names: inside the folder (the same repo, downloaded), else fetched."""
    if reference.startswith("hf://"):
        from workbench.pretrained import parse_hf_uri

        named = parse_hf_uri(reference)
        for candidate in (folder / named.path, folder / Path(named.path).name):
            if named.path and candidate.is_file():
                return candidate
        if fetch is None:
            raise DictionaryError(f"{folder}: the set's file {reference} is not in the folder.")
        return fetch(reference)
    path = Path(reference).expanduser()
    path = path if path.is_absolute() else folder / path
    if not path.is_file():
        raise DictionaryError(f"{folder}: the set's file {reference} does not exist ({path}).")
    return path


def convert_layer(path: Path, *, old_style: bool = False) -> tuple[DictionaryConfig, dict[str, torch.Tensor]]:
    """Our transcoder for one layer file of a set, in whichever layout circuit-tracer would read it."""
    if path.suffix == ".npz":
        arrays = load_npz(path)
        _check_thresholds(arrays.get("threshold"), path)
        return convert_jumprelu(arrays, transcoder=True, source=path)
    if path.suffix != ".safetensors":
        raise DictionaryError(f"{path}: a set's layer file must be .safetensors or .npz (pickles are never loaded).")
    tensors = load_file(path)
    if {"w_enc", "w_dec", "threshold"} <= set(tensors):  # Gemma Scope 2's layout
        skip = tensors.pop("affine_skip_connection", None)
        arrays = {"W_" + k[2:] if k.startswith("w_") else k: v for k, v in tensors.items()}
        unknown = set(arrays) - set(GEMMA_NAMES)
        if unknown:
            raise DictionaryError(f"{path}: unexpected tensors {sorted(unknown)}.")
        _check_thresholds(arrays["threshold"], path)
        return convert_jumprelu(arrays, transcoder=True, source=path, skip=skip)
    return convert_single_layer_transcoder(tensors, old_style=old_style, source=path)


def convert_single_layer_transcoder(
    tensors: dict[str, torch.Tensor], *, old_style: bool = False, source: Path | str = ""
) -> tuple[DictionaryConfig, dict[str, torch.Tensor]]:
    """Our config and state dict for a SingleLayerTranscoder's tensors (module docstring)."""
    tensors = {k: v.float() for k, v in tensors.items()}
    missing = [name for name in ("W_enc", "W_dec", "b_enc", "b_dec") if name not in tensors]
    if missing:
        raise DictionaryError(
            f"{source}: missing tensor(s) {', '.join(missing)}; a circuit-tracer transcoder has W_enc, W_dec, "
            f"b_enc, b_dec (found: {', '.join(sorted(tensors)) or 'none'})."
        )
    unknown = set(tensors) - {"W_enc", "W_dec", "b_enc", "b_dec", "W_skip", "activation_function.threshold"}
    if unknown:
        raise DictionaryError(f"{source}: unexpected tensors {sorted(unknown)}.")
    b_enc, b_dec = tensors["b_enc"], tensors["b_dec"]
    if b_enc.dim() != 1 or b_dec.dim() != 1:
        raise DictionaryError(f"{source}: b_enc and b_dec must be vectors.")
    n_latents, d_out = b_enc.shape[0], b_dec.shape[0]
    W_enc, W_dec = tensors["W_enc"], tensors["W_dec"]
    if W_enc.dim() != 2 or W_enc.shape[0] != n_latents:
        raise DictionaryError(
            f"{source}: W_enc has shape {tuple(W_enc.shape)}; expected [d_transcoder={n_latents}, d_in]."
        )
    d_in = W_enc.shape[1]
    new, old = (n_latents, d_out), (d_out, n_latents)
    if tuple(W_dec.shape) not in (new, old):
        raise DictionaryError(f"{source}: W_dec has shape {tuple(W_dec.shape)}; expected {new}.")
    if tuple(W_dec.shape) == old and (new != old or old_style):
        W_dec = W_dec.T  # circuit-tracer's older layout
    converted = {"W_enc": W_enc.T.contiguous(), "W_dec": W_dec.contiguous(), "b_enc": b_enc, "b_dec": b_dec}
    threshold = tensors.get("activation_function.threshold")
    if threshold is None:
        converted["threshold"] = torch.zeros(n_latents)  # ReLU
    else:
        if threshold.numel() not in (1, n_latents):
            raise DictionaryError(f"{source}: the threshold has {threshold.numel()} values for {n_latents} latents.")
        _check_thresholds(threshold, source)
        converted["threshold"] = threshold.reshape(-1).expand(n_latents).clone()
    if "W_skip" in tensors:
        if tuple(tensors["W_skip"].shape) != (d_out, d_in):
            raise DictionaryError(
                f"{source}: W_skip has shape {tuple(tensors['W_skip'].shape)}; expected {(d_out, d_in)}."
            )
        converted["W_skip"] = tensors["W_skip"].T.contiguous()  # theirs: x @ W_skip.T; ours: x @ W_skip
    config = DictionaryConfig(
        arch="jumprelu",
        d_in=int(d_in),
        n_latents=int(n_latents),
        k=0,
        d_out=int(d_out),
        transcoder=True,
        skip_connection="W_skip" in tensors,
        extra={"imported_from": "circuit_tracer"},
    )
    return config, converted


def _check_thresholds(threshold: torch.Tensor | None, source: Path | str) -> None:
    if threshold is not None and bool((threshold < 0).any()):
        raise DictionaryError(
            f"{source}: negative JumpReLU thresholds; circuit-tracer computes pre * (pre > threshold), which then "
            "lets negative values through, and the workbench's JumpReLU does not."
        )


# -- writing: our transcoders as circuit-tracer reads them -------------------------------------------------

# circuit-tracer names hooks as TransformerLens does: our mlp.hook_in is the MLP's (normalised) input.
FEATURE_INPUT_HOOK, FEATURE_OUTPUT_HOOK = "ln2.hook_normalized", "hook_mlp_out"


def transcoder_tensors(model) -> dict[str, torch.Tensor]:
    """One layer's SingleLayerTranscoder tensors: W_enc [d_transcoder, d_in], W_dec [d_transcoder, d_out], b_enc,
    b_dec, activation_function.threshold (JumpReLU), W_skip [d_out, d_in] where there is one."""
    threshold = getattr(model, "threshold", None)
    if threshold is None:
        raise DictionaryError(
            f"A '{model.config.arch}' transcoder keeps the top k latents per token, which circuit-tracer's transcoders "
            "cannot express (they fire by threshold). Train --arch batchtopk, which infers as a JumpReLU."
        )
    tensors = {
        "W_enc": model.W_enc.detach().T,
        "W_dec": model.W_dec.detach(),
        "b_enc": model.b_enc.detach(),
        "b_dec": model.b_dec.detach(),
        "activation_function.threshold": threshold.detach(),
    }
    if model.config.skip_connection:
        tensors["W_skip"] = model.W_skip.detach().T
    return {k: v.float().contiguous().cpu() for k, v in tensors.items()}


def write_transcoder_set(folder: Path, by_layer: dict, model_name: str, scan: str) -> Path:
    """config.yaml plus layer_{i}.safetensors for layers 0..n-1 (circuit-tracer's load_transcoder_set reads them
    in layer order, so every layer needs one). Paths in the config are relative to the folder."""
    from safetensors.torch import save_file

    missing = [layer for layer in range(max(by_layer) + 1) if layer not in by_layer]
    if missing:
        raise DictionaryError(
            f"circuit-tracer's transcoder sets have one transcoder per layer from 0 on; layers "
            f"{', '.join(map(str, missing))} have none. Train them, or export a set that covers every layer."
        )
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for layer in range(len(by_layer)):
        save_file(transcoder_tensors(by_layer[layer]), folder / f"layer_{layer}.safetensors")
        files.append(f"layer_{layer}.safetensors")
    _write_config(folder, "transcoder_set", model_name, scan, transcoders=files)
    return folder


def _write_config(folder: Path, kind: str, model_name: str, scan: str, **more) -> None:
    """config.yaml as circuit-tracer's load_transcoders reads it."""
    import yaml

    config = {"model_kind": kind, "model_name": model_name, "scan": scan,
              "feature_input_hook": FEATURE_INPUT_HOOK, "feature_output_hook": FEATURE_OUTPUT_HOOK} | more  # fmt: skip
    (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def write_clt(folder: Path, clt, model_name: str, scan: str, n_model_layers: int) -> Path:
    """circuit-tracer's CLT files (its load_clt): W_enc_{i}.safetensors with W_enc_{i} [d_transcoder, d_model],
    b_enc_{i}, b_dec_{i}, threshold_{i}; W_dec_{i}.safetensors with W_dec_{i} [d_transcoder, n_layers - i, d_model];
    and a config.yaml with model_kind cross_layer_transcoder. circuit-tracer's CLTs cover every layer from 0."""
    from safetensors.torch import save_file

    if clt.layers != list(range(n_model_layers)):
        raise DictionaryError(
            f"circuit-tracer's cross-layer transcoders cover every layer of the model (0-{n_model_layers - 1}); this "
            f"one covers {clt.layers[0]}-{clt.layers[-1]}. Train one with --layers 0-{n_model_layers - 1}."
        )
    folder.mkdir(parents=True, exist_ok=True)
    d = clt.d_model
    for i in range(clt.n_layers):
        save_file(
            {
                f"W_enc_{i}": clt.W_enc[i].detach().T.contiguous(),
                f"b_enc_{i}": clt.b_enc[i].detach().contiguous(),
                f"b_dec_{i}": clt.b_dec[i * d : (i + 1) * d].detach().contiguous(),
                f"threshold_{i}": clt.threshold[i].detach().contiguous(),
            },
            folder / f"W_enc_{i}.safetensors",
        )
        save_file({f"W_dec_{i}": clt.W_dec[i].detach().contiguous()}, folder / f"W_dec_{i}.safetensors")
    _write_config(folder, "cross_layer_transcoder", model_name, scan)
    return folder
