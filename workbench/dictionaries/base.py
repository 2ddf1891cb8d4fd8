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
    transcoder: bool = False  # reads one hook and predicts another (e.g. MLP in -> MLP out)
    skip_connection: bool = False  # transcoders: add a learned linear map x @ W_skip
    extra: dict = field(default_factory=dict)  # family-specific settings

    def __post_init__(self) -> None:
        if self.d_out is None:
            self.d_out = self.d_in
        if self.aux_k is None:
            self.aux_k = self.d_in // 2
        if self.skip_connection and not self.transcoder:
            raise DictionaryError("A skip connection is for transcoders only (give --out).")
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
        if config.transcoder:  # input and output live in different spaces: no tied initialisation
            self.W_enc = nn.Parameter(torch.randn(d_in, n) / d_in**0.5)
        self.b_enc = nn.Parameter(torch.zeros(n))
        self.b_dec = nn.Parameter(torch.zeros(d_out))
        if config.skip_connection:
            self.W_skip = nn.Parameter(torch.zeros(d_in, d_out))

    # -- the family-specific part ----------------------------------------------------

    def forward(self, x_BD: torch.Tensor, dead_F: torch.Tensor | None = None) -> SparseOutput:
        raise NotImplementedError

    def encode(self, x_BD: torch.Tensor) -> torch.Tensor:
        """Inference-time latent activations [batch, latents]."""
        raise NotImplementedError

    # -- shared --------------------------------------------------------------------

    def pre_activations(self, x_BD: torch.Tensor) -> torch.Tensor:
        # An SAE subtracts b_dec to centre the input where its output is centred; a transcoder's
        # b_dec lives in the output space, so its input is used as it is.
        centred = x_BD if self.config.transcoder else x_BD - self.b_dec
        return centred @ self.W_enc + self.b_enc

    def decode(self, f_BF: torch.Tensor, x_BD: torch.Tensor | None = None) -> torch.Tensor:
        """Latents to output; transcoders with a skip connection also need the input."""
        recon = f_BF @ self.W_dec + self.b_dec
        if self.config.skip_connection:
            recon = recon + x_BD @ self.W_skip
        return recon

    def reconstruct(self, x_BD: torch.Tensor) -> torch.Tensor:
        """What inference produces for x: decode(encode(x)), with the skip term for skip transcoders."""
        return self.decode(self.encode(x_BD), x_BD)

    @torch.no_grad()
    def fold_scales(self, input_scale: float, target_scale: float) -> None:
        """Turn a dictionary trained on (x * input_scale -> y * target_scale) into one for raw x and y.

        Latents are divided by target_scale, which keeps the decoder rows unit-norm and the
        top-k choice unchanged: W_enc *= input_scale / target_scale, and the biases (and a
        skip term) follow.
        """
        self.W_enc.mul_(input_scale / target_scale)
        self.b_enc.div_(target_scale)
        self.b_dec.div_(target_scale)
        if self.config.skip_connection:
            self.W_skip.mul_(input_scale / target_scale)

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
    import workbench.dictionaries.batchtopk  # noqa: F401  (importing registers the families)
    import workbench.dictionaries.matryoshka  # noqa: F401
    import workbench.dictionaries.mp  # noqa: F401
    import workbench.dictionaries.topk  # noqa: F401

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
