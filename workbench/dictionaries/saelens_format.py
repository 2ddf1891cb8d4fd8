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
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from workbench.dictionaries.base import DictionaryConfig, DictionaryError, SparseCoder
from workbench.hooks import legacy_name

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


def from_saelens(cfg: dict, tensors: dict[str, torch.Tensor], source: Path | str = "") -> tuple[DictionaryConfig, dict]:
    """Config and state dict for a folder we wrote, or one written by SAELens itself.

    A SAELens dictionary is converted exactly: ReLU becomes JumpReLU with threshold 0, a TopK
    SAE trained with rescale_acts_by_decoder_norm gets the norms folded into its encoder, and
    apply_b_dec_to_input=False is folded into b_enc.
    """
    tensors = {k: v.float() for k, v in tensors.items()}
    if "W_skip" in tensors:
        tensors["W_skip"] = tensors["W_skip"].T.contiguous()
    if "workbench" in cfg:
        return DictionaryConfig(**cfg["workbench"]), tensors

    arch = cfg.get("architecture", "standard")
    for key, allowed in (("normalize_activations", "none"), ("reshape_activations", "none")):
        if cfg.get(key, "none") != allowed:
            raise DictionaryError(
                f"{source}: SAELens dictionaries with {key}={cfg[key]!r} are not supported; "
                f"only '{allowed}' converts exactly."
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
    config = DictionaryConfig(
        arch=supported[arch],
        d_in=d_in,
        n_latents=n_latents,
        k=int(cfg["k"]) if arch == "topk" else 0,
        d_out=int(cfg.get("d_out", d_in)),
        transcoder=transcoder,
        skip_connection="skip" in arch,
        extra={"imported_from": "sae_lens", "saelens_architecture": arch},
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


def saelens_metadata(model_name: str, run: str, hook: str, hook_out: str | None) -> dict:
    """What SAELens users look for in cfg.json: the model and the hook names, in TransformerLens's spelling."""
    metadata = {"model_name": model_name, "hook_name": legacy_name(hook), "workbench_run": run, "workbench_hook": hook}
    if hook_out:
        metadata |= {"hook_name_out": legacy_name(hook_out), "workbench_hook_out": hook_out}
    return metadata
