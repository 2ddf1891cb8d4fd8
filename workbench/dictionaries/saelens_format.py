"""Our dictionaries in SAELens's on-disk layout, and SAELens dictionaries in ours.

A dictionary folder holds `cfg.json` and `sae_weights.safetensors`, as SAELens (6.x) writes
them, so `sae_lens.SAE.load_from_disk(folder)` loads our TopK SAEs (architecture "topk"), our
JumpReLU-inference families, BatchTopK, Matryoshka, mutual and feature choice ("jumprelu"),
and those families as transcoders ("jumprelu_transcoder", "jumprelu_skip_transcoder"). Our own
settings ride along in cfg.json under "workbench"; SAELens ignores keys it does not know.

Families SAELens has no exact equivalent for are written with architecture
"workbench.<family>", which SAELens refuses by name rather than loading it wrongly: a TopK
transcoder (SAELens 6 has no TopK transcoder), MP-SAE (SAELens's MP stops on an absolute
residual, ours on a relative one) and top-AFA.

Layout differences handled here: SAELens's threshold is per latent (so is ours); its skip
matrix is [d_out, d_in], ours [d_in, d_out].

Importing (from_saelens) also folds SAELens's input normalisation where it is a fixed map, as SAELens
itself does (sae_lens/saes/sae.py): `expected_average_only_in` multiplies inputs by one scaling factor
(fold_activation_norm_scaling_factor: W_enc * s, W_dec / s, b_dec / s), `covariance_whitening` maps them
by (x - mean) @ M (fold_activation_whitening). `layer_norm` and `constant_norm_rescale` rescale each input
by its own statistics, which no fixed weights reproduce, so they are refused. `reshape_activations='hook_z'`
reads the heads side by side, which is the layout of our `blocks.L.attn.hook_z`.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file

from workbench.dictionaries.base import (
    LEGACY_WEIGHTS_FILE,
    WEIGHTS_FILE,
    DictionaryConfig,
    DictionaryError,
    SparseCoder,
)
from workbench.hooks import legacy_name

if TYPE_CHECKING:
    from workbench.dictionaries.formats import Converted, Hints

SAELENS_FORMAT_VERSION = "6.0.0"  # the cfg.json layout we write (SAELens reads older layouts differently)


def saelens_architecture(model: SparseCoder) -> str:
    from workbench.dictionaries.batchtopk import JumpReLUSAE

    config = model.config
    if config.arch == "topk" and not config.transcoder:
        return "topk"
    if isinstance(model, JumpReLUSAE):  # every family whose inference is a per-latent threshold
        if not config.transcoder:
            return "jumprelu"
        return "jumprelu_skip_transcoder" if config.skip_connection else "jumprelu_transcoder"
    return f"workbench.{config.arch}"


def to_saelens(model: SparseCoder, metadata: dict) -> tuple[dict, dict[str, torch.Tensor]]:
    """cfg.json contents and weights for `model`; metadata: model_name, hook_name, hook_name_out, ..."""
    config = model.config
    tensors = model.inference_state()
    if "W_skip" in tensors:
        tensors["W_skip"] = tensors["W_skip"].T.contiguous()
    cfg = {
        "architecture": saelens_architecture(model),
        "d_in": config.d_in,
        "d_sae": config.n_latents,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": not config.transcoder,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {"sae_lens_version": SAELENS_FORMAT_VERSION, "sae_lens_training_version": None, **metadata},
        "workbench": asdict(config),
    }
    if config.transcoder:
        cfg["d_out"] = config.d_out
    if cfg["architecture"] == "topk":
        cfg["k"] = config.k
        cfg["rescale_acts_by_decoder_norm"] = False  # exact either way: our decoder rows have unit norm
    return cfg, tensors


def from_saelens(
    cfg: dict,
    tensors: dict[str, torch.Tensor],
    source: Path | str = "",
    *,
    norm_scaling_factor: float | None = None,
    whitening: dict[str, torch.Tensor] | None = None,
) -> tuple[DictionaryConfig, dict]:
    """Config and state dict for a folder we wrote, or one written by SAELens itself.

    A SAELens dictionary is converted exactly: ReLU becomes JumpReLU with threshold 0, a TopK
    SAE trained with rescale_acts_by_decoder_norm gets the norms folded into its encoder, and
    apply_b_dec_to_input=False is folded into b_enc. Normalised inputs are folded as SAELens folds
    them (module docstring), given the scaling factor or the whitening tensors (mean, matrix,
    inverse_matrix) where the normalisation needs them.
    """
    tensors = {k: v.float() for k, v in tensors.items()}
    if "W_skip" in tensors:
        tensors["W_skip"] = tensors["W_skip"].T.contiguous()
    if "workbench" in cfg:
        return DictionaryConfig(**cfg["workbench"]), tensors

    cfg = _as_saelens_6(cfg)
    arch = cfg.get("architecture", "standard")
    if cfg.get("reshape_activations", "none") not in ("none", "hook_z"):
        raise DictionaryError(
            f"{source}: SAELens dictionaries with reshape_activations={cfg['reshape_activations']!r} are not "
            "supported; 'none' and 'hook_z' convert exactly."
        )
    head = cfg.get("hook_head_index", (cfg.get("metadata") or {}).get("hook_head_index"))
    if head is not None:
        raise DictionaryError(
            f"{source} reads one attention head (hook_head_index={head}); the workbench's attn.hook_z holds "
            "every head side by side, so it has no hook for it."
        )
    supported = {
        "topk": "topk",
        "standard": "jumprelu",
        "jumprelu": "jumprelu",
        "transcoder": "jumprelu",
        "skip_transcoder": "jumprelu",
        "jumprelu_transcoder": "jumprelu",
        "jumprelu_skip_transcoder": "jumprelu",
    }
    if arch not in supported:
        raise DictionaryError(
            f"{source}: SAELens architecture '{arch}' cannot be imported; supported: {', '.join(supported)}."
        )
    transcoder = "transcoder" in arch
    d_in, n_latents = int(cfg["d_in"]), int(cfg["d_sae"])
    if tuple(tensors["W_enc"].shape) != (d_in, n_latents):
        raise DictionaryError(
            f"{source}: W_enc has shape {tuple(tensors['W_enc'].shape)}, but cfg.json says "
            f"d_in={d_in}, d_sae={n_latents}."
        )
    if "scaling_factor" in tensors:  # SAELens < 6's fine-tuning scale; SAELens drops it when it is all ones
        if not torch.equal(tensors["scaling_factor"], torch.ones_like(tensors["scaling_factor"])):
            raise DictionaryError(f"{source}: a fine-tuning scaling_factor other than 1 is not supported.")
        del tensors["scaling_factor"]
    folded = _fold_normalisation(cfg, tensors, source, transcoder, norm_scaling_factor, whitening)
    extra: dict = {"imported_from": "sae_lens", "saelens_architecture": arch}
    if folded:
        extra["folded_normalisation"] = folded
    if cfg.get("reshape_activations") == "hook_z":
        extra["reads"] = "attn.hook_z"
    config = DictionaryConfig(
        arch=supported[arch],
        d_in=d_in,
        n_latents=n_latents,
        k=int(cfg["k"]) if arch == "topk" else 0,
        d_out=int(cfg.get("d_out", d_in)),
        transcoder=transcoder,
        skip_connection="skip" in arch,
        extra=extra,
    )
    if supported[arch] == "jumprelu" and "threshold" not in tensors:
        tensors["threshold"] = torch.zeros(n_latents)  # ReLU: fires wherever the pre-activation is positive
    if "log_threshold" in tensors:
        tensors["threshold"] = tensors.pop("log_threshold").exp()
    if arch == "topk" and cfg.get("rescale_acts_by_decoder_norm", False):
        norms_F = tensors["W_dec"].norm(dim=1)
        tensors["W_enc"] = tensors["W_enc"] * norms_F
        tensors["b_enc"] = tensors["b_enc"] * norms_F
        tensors["W_dec"] = tensors["W_dec"] / norms_F[:, None]
    if not transcoder and not cfg.get("apply_b_dec_to_input", True):
        tensors["b_enc"] = tensors["b_enc"] + tensors["b_dec"] @ tensors["W_enc"]  # we always centre; compensate
    unknown = set(tensors) - {"W_enc", "W_dec", "b_enc", "b_dec", "threshold", "W_skip"}
    if unknown:
        raise DictionaryError(f"{source}: unexpected tensors {sorted(unknown)} for SAELens architecture '{arch}'.")
    return config, tensors


# Normalisations that scale each input by its own statistics: no fixed weights compute the same thing.
PER_INPUT_NORMALISATIONS = {
    "layer_norm": "subtracts each input's mean and divides by its standard deviation, then multiplies the "
    "reconstruction back by them",
    "constant_norm_rescale": "rescales each input to norm sqrt(d_in), then multiplies the reconstruction back",
}


def _fold_normalisation(
    cfg: dict,
    tensors: dict[str, torch.Tensor],
    source: Path | str,
    transcoder: bool,
    factor: float | None,
    whitening: dict[str, torch.Tensor] | None,
) -> str | None:
    """Fold SAELens's input normalisation into `tensors` (in place) as SAELens folds it; what was folded."""
    mode = cfg.get("normalize_activations", "none")
    if mode == "none":
        return None
    if mode in PER_INPUT_NORMALISATIONS:
        raise DictionaryError(
            f"{source}: normalize_activations={mode!r} {PER_INPUT_NORMALISATIONS[mode]}. That depends on each "
            "input, so no fixed weights compute it and the workbench cannot import it exactly."
        )
    if transcoder:
        raise DictionaryError(
            f"{source}: a transcoder with normalize_activations={mode!r} is not supported (SAELens folds "
            "normalisation for SAEs only)."
        )
    if mode == "expected_average_only_in":
        if factor is None:
            raise DictionaryError(
                f"{source}: normalize_activations='expected_average_only_in' means it was trained on inputs "
                "multiplied by a scaling factor (sqrt(d_in) / their mean norm), and no factor was found: none "
                "in SAELens's directory for this SAE, and no activation_scaler.json beside it. Give it with "
                "--norm-scaling-factor (1 takes the weights as they are, as SAELens's load_from_disk does)."
            )
        s = float(factor)
        tensors["W_enc"] = tensors["W_enc"] * s  # SAE.fold_activation_norm_scaling_factor: latents keep their scale
        tensors["W_dec"] = tensors["W_dec"] / s
        tensors["b_dec"] = tensors["b_dec"] / s
        return f"expected_average_only_in (scaling factor {s!r})"
    if mode == "covariance_whitening":
        if whitening is None or not {"mean", "matrix", "inverse_matrix"} <= set(whitening):
            raise DictionaryError(
                f"{source}: normalize_activations='covariance_whitening' needs the whitening SAELens saved "
                "beside it (activation_scaler.json and activation_whitening.safetensors with mean, matrix and "
                "inverse_matrix); they are missing."
            )
        mean, matrix, inverse = (whitening[k].double() for k in ("mean", "matrix", "inverse_matrix"))
        W_enc = matrix @ tensors["W_enc"].double()  # SAE.fold_activation_whitening: z = (x - mean) @ M
        if not cfg.get("apply_b_dec_to_input", True):
            tensors["b_enc"] = (tensors["b_enc"].double() - mean @ W_enc).float()
        tensors["W_enc"] = W_enc.float()
        tensors["W_dec"] = (tensors["W_dec"].double() @ inverse).float()
        tensors["b_dec"] = (tensors["b_dec"].double() @ inverse + mean).float()
        return "covariance_whitening"
    raise DictionaryError(f"{source}: unknown normalize_activations={mode!r}.")


def _as_saelens_6(cfg: dict) -> dict:
    """The settings SAELens < 6 spelt differently, read as SAELens 6 reads them (handle_pre_6_0_config)."""
    cfg = dict(cfg)
    normalise = cfg.get("normalize_activations", "none")
    if normalise is None or normalise is False:
        cfg["normalize_activations"] = "none"
    elif normalise is True:
        cfg["normalize_activations"] = "expected_average_only_in"
    activation = cfg.get("activation_fn", cfg.get("activation_fn_str"))
    k = (cfg.get("activation_fn_kwargs") or {}).get("k")
    if "architecture" not in cfg and activation == "topk" and k is not None:
        cfg["architecture"], cfg["k"] = "topk", k
    if "reshape_activations" not in cfg:
        cfg["reshape_activations"] = "hook_z" if "hook_z" in str(_hook_names(cfg)[0] or "") else "none"
    return cfg


def _hook_names(cfg: dict) -> tuple[str | None, str | None]:
    """The hooks a cfg.json names: top-level (SAELens < 6, or directory overrides) before its metadata."""
    metadata = cfg.get("metadata") or {}
    hook = cfg.get("hook_name") or cfg.get("hook_point") or metadata.get("workbench_hook") or metadata.get("hook_name")
    hook_out = cfg.get("hook_name_out") or metadata.get("workbench_hook_out") or metadata.get("hook_name_out")
    return hook, hook_out


def read_saelens_folder(folder: Path, hints: Hints) -> Converted:
    """A SAELens-layout folder (or one of ours): cfg.json with the directory's overrides applied, the weights,
    and the normalisation SAELens saved beside them (activation_scaler.json, activation_whitening.safetensors)."""
    from workbench.dictionaries.formats import Converted

    try:
        cfg = json.loads((folder / "cfg.json").read_text())
    except json.JSONDecodeError as error:
        raise DictionaryError(f"{folder / 'cfg.json'} is not valid JSON ({error}).") from None
    if (folder / LEGACY_WEIGHTS_FILE).exists() and not (folder / WEIGHTS_FILE).exists():
        from workbench.dictionaries.base import load_dictionary

        model = load_dictionary(folder)  # our own pre-SAELens layout
        return Converted(model.config, model.inference_state(), "saelens")
    cfg.update(hints.config_overrides)  # as SAELens's loaders apply its directory's overrides
    factor, whitening = hints.norm_scaling_factor, None
    scaler = folder / "activation_scaler.json"
    if scaler.exists():
        saved = json.loads(scaler.read_text())
        factor = factor if factor is not None else saved.get("scaling_factor")
        if saved.get("has_whitening", True) and (folder / "activation_whitening.safetensors").exists():
            whitening = load_file(folder / "activation_whitening.safetensors")
    config, tensors = from_saelens(
        cfg, load_file(folder / WEIGHTS_FILE), source=folder, norm_scaling_factor=factor, whitening=whitening
    )
    hook, hook_out = _hook_names(cfg)
    metadata = cfg.get("metadata") or {}
    return Converted(
        config,
        tensors,
        "saelens",
        hook=hook,
        hook_out=hook_out,
        model_name=cfg.get("model_name") or metadata.get("model_name") or hints.model,
        reads_hook_z=config.extra.get("reads") == "attn.hook_z",
        folded=[config.extra["folded_normalisation"]] if "folded_normalisation" in config.extra else [],
    )


def saelens_metadata(model_name: str, run: str, hook: str, hook_out: str | None) -> dict:
    """What SAELens users look for in cfg.json: the model and the hook names, in TransformerLens's spelling."""
    metadata = {"model_name": model_name, "hook_name": legacy_name(hook), "workbench_run": run, "workbench_hook": hook}
    if hook_out:
        metadata |= {"hook_name_out": legacy_name(hook_out), "workbench_hook_out": hook_out}
    return metadata
