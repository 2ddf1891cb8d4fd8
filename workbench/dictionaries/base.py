"""What every sparse dictionary shares: config, forward output, decoder constraints, files on disk.

Like overcomplete, every family returns the same SparseOutput, so the training loop and the
metrics never special-case an architecture. Tensor names carry their shapes (x_BD: batch x
d_in, f_BF: batch x latents), as in dictionary_learning.

On disk a dictionary is a folder with `cfg.json` and `model.safetensors`. We load only
safetensors: a pickle (.pt) can run arbitrary code when loaded.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from workbench.errors import WorkbenchError


class DictionaryError(WorkbenchError):
    pass


@dataclass
class DictionaryConfig:
    arch: str
    d_in: int
    n_latents: int
    k: int
    d_out: int | None = None  # transcoders: the output width; None means d_out = d_in
    aux_k: int | None = None  # AuxK: how many dead latents model the residual; default d_in // 2
    aux_coefficient: float = 1 / 32
    extra: dict = field(default_factory=dict)  # family-specific settings

    def __post_init__(self) -> None:
        if self.d_out is None:
            self.d_out = self.d_in
        if self.aux_k is None:
            self.aux_k = self.d_in // 2
        if not 0 < self.k < self.n_latents:
            raise DictionaryError(f"k must be between 1 and the number of latents minus one ({self.n_latents - 1}); got k={self.k}.")


class SparseOutput(NamedTuple):
    f_BF: torch.Tensor  # latent activations, dense with zeros
    recon_BD: torch.Tensor  # reconstruction of the target
    aux_loss: torch.Tensor  # extra loss (AuxK, prefix losses, ...), already weighted; 0 if none


class SparseCoder(nn.Module):
    """Base: an encoder to latents and a unit-norm linear decoder with a bias."""

    config: DictionaryConfig

    def __init__(self, config: DictionaryConfig):
        super().__init__()
        self.config = config
        d_in, n, d_out = config.d_in, config.n_latents, config.d_out
        decoder = torch.randn(n, d_out)
        self.W_dec = nn.Parameter(decoder / decoder.norm(dim=1, keepdim=True))
        self.W_enc = nn.Parameter(self.W_dec.data.T.contiguous() if d_in == d_out else torch.randn(d_in, n) / d_in**0.5)
        self.b_enc = nn.Parameter(torch.zeros(n))
        self.b_dec = nn.Parameter(torch.zeros(d_out))

    # -- the family-specific part ----------------------------------------------------

    def forward(self, x_BD: torch.Tensor, dead_F: torch.Tensor | None = None) -> SparseOutput:
        raise NotImplementedError

    def encode(self, x_BD: torch.Tensor) -> torch.Tensor:
        """Inference-time latent activations [batch, latents]."""
        raise NotImplementedError

    # -- shared --------------------------------------------------------------------

    def pre_activations(self, x_BD: torch.Tensor) -> torch.Tensor:
        # Subtracting b_dec centres the input where the decoder's output is centred (same space).
        centred = x_BD - self.b_dec if self.config.d_in == self.config.d_out else x_BD
        return centred @ self.W_enc + self.b_enc

    def decode(self, f_BF: torch.Tensor) -> torch.Tensor:
        return f_BF @ self.W_dec + self.b_dec

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        self.W_dec.data /= self.W_dec.data.norm(dim=1, keepdim=True).clamp_min(1e-8)

    @torch.no_grad()
    def remove_parallel_gradient(self) -> None:
        """Project out the part of each decoder row's gradient along the row, which the unit-norm constraint undoes."""
        if self.W_dec.grad is None:
            return
        parallel = (self.W_dec.grad * self.W_dec.data).sum(dim=1, keepdim=True)
        self.W_dec.grad -= parallel * self.W_dec.data

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}, folder / "model.safetensors")
        (folder / "cfg.json").write_text(json.dumps(asdict(self.config), indent=2))


_FAMILIES: dict[str, type[SparseCoder]] = {}


def register(arch: str):
    def decorate(cls: type[SparseCoder]) -> type[SparseCoder]:
        _FAMILIES[arch] = cls
        return cls

    return decorate


def make_dictionary(config: DictionaryConfig) -> SparseCoder:
    import workbench.dictionaries.topk  # noqa: F401  (registers the families)

    if config.arch not in _FAMILIES:
        raise DictionaryError(f"Unknown architecture '{config.arch}'; available: {', '.join(sorted(_FAMILIES))}.")
    return _FAMILIES[config.arch](config)


def load_dictionary(folder: str | Path, expected_arch: str | None = None) -> SparseCoder:
    """Load cfg.json + model.safetensors; refuses pickles and checkpoints of another architecture."""
    folder = Path(folder)
    pickles = (".pt", ".pth", ".bin", ".pkl", ".ckpt")
    offered_pickle = folder.suffix in pickles or (
        folder.is_dir() and not (folder / "model.safetensors").exists() and any(p.suffix in pickles for p in folder.iterdir()))
    if offered_pickle:
        raise DictionaryError(
            f"{folder} is a pickle checkpoint; the workbench loads only safetensors, because unpickling can run "
            "arbitrary code. Convert it with torch.load in a trusted session and save_file from safetensors."
        )
    if not (folder / "cfg.json").exists() or not (folder / "model.safetensors").exists():
        raise DictionaryError(f"{folder} is not a dictionary folder: it needs cfg.json and model.safetensors.")
    config = DictionaryConfig(**json.loads((folder / "cfg.json").read_text()))
    if expected_arch is not None and config.arch != expected_arch:
        raise DictionaryError(f"{folder} holds a '{config.arch}' dictionary, not '{expected_arch}'.")
    model = make_dictionary(config)
    model.load_state_dict(load_file(folder / "model.safetensors"))
    return model
