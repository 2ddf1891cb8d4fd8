"""Gemma Scope (`params.npz`) and Gemma Scope 2 (`params.safetensors` + `config.json`) dictionaries, exactly.

Both are JumpReLU dictionaries computing, as Gemma Scope's tutorial defines it (its `JumpReLUSAE`), as
SAELens loads them (loading/pretrained_sae_loaders.py: gemma_2, gemma_2_transcoder and gemma_3 loaders,
all with apply_b_dec_to_input=False) and as circuit-tracer loads their transcoders
(load_gemma_scope_transcoder, load_gemma_scope_2_transcoder):

    pre = x @ W_enc + b_enc            (b_dec is not subtracted from the input)
    f   = relu(pre) * (pre > threshold)
    out = f @ W_dec + b_dec [+ x @ affine_skip_connection]

Arrays: W_enc [d_in, d_sae], W_dec [d_sae, d_out], b_enc [d_sae], b_dec [d_out], threshold [d_sae]. The
npz spells them W_enc/W_dec/b_enc/b_dec/threshold (SAELens also accepts w_enc, w_dec); Gemma Scope 2 spells
them w_enc, w_dec, b_enc, b_dec, threshold, and its affine transcoders add affine_skip_connection
[d_in, d_out] (our W_skip's orientation; SAELens and circuit-tracer transpose it for x @ W_skip.T).

Our SAEs subtract b_dec from the input, so b_dec @ W_enc is added to b_enc; our transcoders use the input
as it is, like theirs. Gemma Scope 2's cross-layer transcoders (w_dec [d_sae, n_layers, d_out]) write into
every later layer and are refused.

Which hook: Gemma Scope's npz carries no config, so the hook comes from the repo and path as SAELens's
get_gemma_2_config_from_hf derives it (only for named sources); Gemma Scope 2's config.json names the
Hugging Face module it reads (`hf_hook_point_in`), mapped in GEMMA3_HOOK_POINTS.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from workbench.dictionaries.base import DictionaryConfig
from workbench.dictionaries.formats import Converted, Hints
from workbench.errors import DictionaryError

NAMES = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")

# Gemma 3 module outputs and inputs (config.json's hf_hook_point_in/out) as workbench hooks. The MLP's
# output after its post-norm is what enters the residual stream: SAELens names it hook_mlp_out.
GEMMA3_HOOK_POINTS = (
    (re.compile(r"^model\.layers\.(\d+)\.output$"), "blocks.{}.hook_out"),
    (re.compile(r"^model\.layers\.(\d+)\.self_attn\.o_proj\.input$"), "blocks.{}.attn.hook_z"),
    (re.compile(r"^model\.layers\.(\d+)\.pre_feedforward_layernorm\.output$"), "blocks.{}.mlp.hook_in"),
    (re.compile(r"^model\.layers\.(\d+)\.post_feedforward_layernorm\.output$"), "blocks.{}.mlp.hook_out"),
)
# Gemma Scope 2 folder names without a config.json, as SAELens's _infer_gemma_3_raw_cfg_dict reads them.
GEMMA3_FOLDER_KINDS = (
    ("transcoder", "blocks.{}.mlp.hook_in", "blocks.{}.mlp.hook_out"),
    ("resid_post", "blocks.{}.hook_out", None),
    ("attn_out", "blocks.{}.attn.hook_z", None),
    ("mlp_out", "blocks.{}.mlp.hook_out", None),
)


def convert_jumprelu(
    arrays: dict[str, torch.Tensor], *, transcoder: bool, source: Path | str, skip: torch.Tensor | None = None
) -> tuple[DictionaryConfig, dict[str, torch.Tensor]]:
    """Our config and state dict for Gemma Scope's JumpReLU arrays (module docstring), shapes checked."""
    missing = [name for name in NAMES if name not in arrays]
    if missing:
        raise DictionaryError(
            f"{source}: missing array(s) {', '.join(missing)}; a Gemma Scope dictionary has "
            f"{', '.join(NAMES)} (found: {', '.join(sorted(arrays)) or 'none'})."
        )
    W_enc, W_dec, b_enc, b_dec, threshold = (arrays[name].float() for name in NAMES)
    if W_enc.dim() != 2:
        raise DictionaryError(f"{source}: W_enc has shape {tuple(W_enc.shape)}; expected [d_in, d_sae].")
    d_in, n_latents = W_enc.shape
    if W_dec.dim() == 3:
        raise DictionaryError(
            f"{source}: W_dec has shape {tuple(W_dec.shape)}, a cross-layer transcoder's (it writes into every "
            "later layer); the workbench imports single-layer dictionaries only."
        )
    d_out = W_dec.shape[-1] if W_dec.dim() == 2 else -1
    expected = {
        "W_dec": (n_latents, d_out),
        "b_enc": (n_latents,),
        "b_dec": (d_out,),
        "threshold": (n_latents,),
    }
    found = {"W_dec": W_dec.shape, "b_enc": b_enc.shape, "b_dec": b_dec.shape, "threshold": threshold.shape}
    wrong = [f"{k} {tuple(found[k])} (expected {v})" for k, v in expected.items() if tuple(found[k]) != v]
    if skip is not None and tuple(skip.shape) != (d_in, d_out):
        wrong.append(f"affine_skip_connection {tuple(skip.shape)} (expected {(d_in, d_out)})")
    if wrong:
        raise DictionaryError(
            f"{source}: inconsistent shapes with W_enc [d_in={d_in}, d_sae={n_latents}]: {'; '.join(wrong)}."
        )
    if not transcoder and d_out != d_in:
        raise DictionaryError(
            f"{source}: it maps width {d_in} to {d_out}, so it is a transcoder: give --out, the hook it predicts."
        )
    tensors = {"W_enc": W_enc, "W_dec": W_dec, "b_enc": b_enc, "b_dec": b_dec, "threshold": threshold}
    if not transcoder:
        tensors["b_enc"] = b_enc + b_dec @ W_enc  # ours subtracts b_dec from the input; theirs does not
    if skip is not None:
        tensors["W_skip"] = skip.float()
    config = DictionaryConfig(
        arch="jumprelu",
        d_in=int(d_in),
        n_latents=int(n_latents),
        k=0,
        d_out=int(d_out),
        transcoder=transcoder,
        skip_connection=skip is not None,
        extra={"imported_from": "gemma_scope"},
    )
    return config, tensors


def load_npz(path: Path) -> dict[str, torch.Tensor]:
    """A Gemma Scope npz's arrays under our names (w_enc read as W_enc, as SAELens's loader does)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {("W_" + key[2:] if key.startswith("w_") else key): torch.from_numpy(data[key]) for key in data}
    except (ValueError, OSError) as error:
        raise DictionaryError(f"{path} is not a readable npz of arrays ({error}).") from None
    return arrays


def gemma_scope_hooks(repo_id: str | None, path: str) -> tuple[str | None, str | None]:
    """The hooks of a Gemma Scope (1) dictionary from its repo and path, as SAELens derives them; (None, None)
    when they do not say (a local folder)."""
    layer = re.search(r"layer_(\d+)", path)
    if repo_id is None or layer is None:
        return None, None
    repo, L = repo_id.split("/")[-1], layer.group(1)
    if "transcoder" in repo:
        return f"blocks.{L}.ln2.hook_normalized", f"blocks.{L}.hook_mlp_out"
    if "embedding" in path:
        return None, None
    if "res" in repo:
        return f"blocks.{L}.hook_resid_post", None
    if "mlp" in repo:
        return f"blocks.{L}.hook_mlp_out", None
    if "att" in repo:
        return f"blocks.{L}.attn.hook_z", None
    return None, None


def read_gemmascope_folder(folder: Path, hints: Hints, transcoder: bool | None) -> Converted:
    """A Gemma Scope folder: params.npz (SAE, or transcoder when --out is given or the repo says so)."""
    hook, hook_out = gemma_scope_hooks(hints.repo_id, hints.path)
    if "embedding" in hints.path:
        raise DictionaryError(
            f"{folder}: Gemma Scope's embedding SAEs read hook_embed (scaled by sqrt(d_model)), which is not a "
            "workbench hook."
        )
    is_transcoder = transcoder if transcoder is not None else hook_out is not None
    config, tensors = convert_jumprelu(load_npz(folder / "params.npz"), transcoder=is_transcoder, source=folder)
    return Converted(
        config,
        tensors,
        "gemmascope",
        hook=hook,
        hook_out=hook_out,
        model_name=hints.model,
        reads_hook_z=hook is not None and hook.endswith("attn.hook_z"),
    )


def gemma3_hook(point: str | None) -> str | None:
    if point is None:
        return None
    for pattern, hook in GEMMA3_HOOK_POINTS:
        match = pattern.match(point)
        if match:
            return hook.format(match.group(1))
    return None


def read_gemmascope2_folder(folder: Path, hints: Hints, transcoder: bool | None) -> Converted:
    """A Gemma Scope 2 folder: params.safetensors and (usually) config.json."""
    raw: dict = {}
    if (folder / "config.json").exists():
        try:
            raw = json.loads((folder / "config.json").read_text())
        except json.JSONDecodeError as error:
            raise DictionaryError(f"{folder / 'config.json'} is not valid JSON ({error}).") from None
    name = hints.path or "/".join(folder.parts[-2:])  # e.g. resid_post/layer_12_width_16k_l0_medium
    if raw.get("architecture", "jump_relu") != "jump_relu":
        raise DictionaryError(
            f"{folder}: architecture {raw['architecture']!r}; Gemma Scope 2 dictionaries are jump_relu."
        )
    point_in, point_out = raw.get("hf_hook_point_in"), raw.get("hf_hook_point_out")
    hook, hook_out = gemma3_hook(point_in), gemma3_hook(point_out) if point_out != point_in else None
    if point_in is None:  # no config.json: the folder name says (SAELens's _infer_gemma_3_raw_cfg_dict)
        layer = re.search(r"layer_(\d+)", name)
        for kind, into, out in GEMMA3_FOLDER_KINDS:
            if layer and kind in name:
                hook, hook_out = into.format(layer.group(1)), out.format(layer.group(1)) if out else None
                break
    raw_tensors = load_file(folder / "params.safetensors")
    arrays = {key.replace("w_", "W_", 1) if key.startswith("w_") else key: v for key, v in raw_tensors.items()}
    skip = arrays.pop("affine_skip_connection", None)
    unknown = set(arrays) - set(NAMES)
    if unknown:
        raise DictionaryError(f"{folder}: unexpected tensors {sorted(unknown)} in params.safetensors.")
    is_transcoder = transcoder if transcoder is not None else (hook_out is not None or skip is not None)
    config, tensors = convert_jumprelu(arrays, transcoder=is_transcoder, source=folder, skip=skip)
    config.extra["imported_from"] = "gemma_scope_2"
    model = raw.get("model_name") or hints.model
    return Converted(
        config,
        tensors,
        "gemmascope2",
        hook=hook,
        hook_out=hook_out if is_transcoder else None,
        model_name=model,
        reads_hook_z=hook is not None and hook.endswith("attn.hook_z"),
    )
