"""What every sparse dictionary shares: config, forward output, decoder constraints, files on disk.

Like overcomplete, every family returns the same SparseOutput, so the training loop and the
metrics never special-case an architecture. Tensor names carry their shapes (x_BD: batch x
d_in, f_BF: batch x latents), as in dictionary_learning.

On disk a dictionary is a folder in SAELens's layout (`cfg.json` + `sae_weights.safetensors`,
see saelens_format.py), so SAELens loads the families it has an equivalent for. We load only
safetensors: a pickle (.pt) can run arbitrary code when loaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from workbench.dictionaries.sparse_ops import gather_pre_activations, sparse_decode
from workbench.distributed import centred_square_sum, ratio_over_ranks
from workbench.errors import DictionaryError


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
        if self.transcoder and self.arch in SAME_SPACE_ONLY:
            raise DictionaryError(
                f"'{self.arch}' compares latents with the input's own norm or residual, so it needs the "
                "input and output in one space: it cannot be a transcoder. Use topk or batchtopk with --out."
            )
        if self.arch in NO_FIXED_K and self.k == 0:
            return  # imported JumpReLU dictionaries have thresholds, not a k
        if not 0 < self.k < self.n_latents:
            raise DictionaryError(
                f"k must be between 1 and the number of latents minus one ({self.n_latents - 1}); got k={self.k}."
            )

    # d_out and aux_k stay optional fields (the constructor takes None, asdict and cfg.json are unchanged);
    # __post_init__ fills them in, and these give that filled-in value as an int.

    @property
    def output_width(self) -> int:
        """d_out once resolved: the width of the reconstruction (d_in unless a transcoder says otherwise)."""
        assert self.d_out is not None, "set by __post_init__"
        return self.d_out

    @property
    def aux_width(self) -> int:
        """aux_k once resolved: how many latents AuxK uses."""
        assert self.aux_k is not None, "set by __post_init__"
        return self.aux_k


# Families whose encoder reads the input against its own decoder (MP's residual, top-AFA's norm).
SAME_SPACE_ONLY = ("mp", "topafa")
# Families that may have no k: a JumpReLU imported from SAELens fires by threshold alone.
NO_FIXED_K = ("jumprelu",)


class SparseOutput(NamedTuple):
    f_BF: torch.Tensor  # latent activations, dense with zeros; for metrics (TopK returns it without gradient)
    recon_BD: torch.Tensor  # reconstruction of the target
    aux_loss: torch.Tensor  # extra loss (AuxK, prefix losses, ...), already weighted; 0 if none


class SparseCoder(nn.Module):
    """Base: an encoder to latents and a unit-norm linear decoder with a bias."""

    config: DictionaryConfig
    trainable = True  # False for inference-only families (imported JumpReLU): `workbench train` does not offer them

    def __init__(self, config: DictionaryConfig):
        super().__init__()
        self.config = config
        d_in, n, d_out = config.d_in, config.n_latents, config.output_width
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

    def forward(
        self, x_BD: torch.Tensor, dead_F: torch.Tensor | None = None, target_BD: torch.Tensor | None = None
    ) -> SparseOutput:
        """One training pass. `dead_F` marks the latents the auxiliary loss may revive; `target_BD` is what
        to reconstruct (a transcoder's output hook), x_BD itself when None. Every family takes these three."""
        raise NotImplementedError

    def encode(self, x_BD: torch.Tensor) -> torch.Tensor:
        """Inference-time latent activations [batch, latents]."""
        raise NotImplementedError

    # -- shared --------------------------------------------------------------------

    def encoder_input(self, x_BD: torch.Tensor) -> torch.Tensor:
        # An SAE subtracts b_dec to centre the input where its output is centred; a transcoder's
        # b_dec lives in the output space, so its input is used as it is.
        return x_BD if self.config.transcoder else x_BD - self.b_dec

    def pre_activations(self, x_BD: torch.Tensor) -> torch.Tensor:
        return self.encoder_input(x_BD) @ self.W_enc + self.b_enc

    def decode(self, f_BF: torch.Tensor, x_BD: torch.Tensor | None = None) -> torch.Tensor:
        """Latents to output; transcoders with a skip connection also need the input."""
        recon = f_BF @ self.W_dec + self.b_dec
        if self.config.skip_connection:
            assert x_BD is not None, "a skip connection decodes with the input too"
            recon = recon + x_BD @ self.W_skip
        return recon

    def reconstruct(self, x_BD: torch.Tensor) -> torch.Tensor:
        """What inference produces for x: decode(encode(x)), with the skip term for skip transcoders."""
        return self.decode(self.encode(x_BD), x_BD)

    def residual_aux_loss(
        self,
        pre_BF: torch.Tensor,
        residual_BD: torch.Tensor,
        eligible_F: torch.Tensor | None,
        weight_F: torch.Tensor | None = None,
        encoder_input_BD: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """AuxK (Gao et al.): the top aux_k eligible latents (dead ones, for AuxK) reconstruct the residual.

        `weight_F` scales each latent's activation in that reconstruction; aux_zipf_loss uses it to
        weigh latents by how far below their expected usage they are (a dead latent has weight 1).
        With `encoder_input_BD`, pre_BF carries no gradient and the chosen entries are re-gathered
        sparsely (sparse_ops), as TopK training does.
        """
        if eligible_F is None or not bool(eligible_F.any()):
            return pre_BF.new_zeros(())
        k_aux = min(self.config.aux_width, int(eligible_F.sum()))
        _, indices = pre_BF.detach().masked_fill(~eligible_F, float("-inf")).topk(k_aux, dim=-1, sorted=False)
        if encoder_input_BD is not None:
            values = gather_pre_activations(encoder_input_BD, self.W_enc, self.b_enc, indices, pre_BF)
        else:
            values = pre_BF.gather(-1, indices)
        values = values.relu()
        if weight_F is not None:
            values = values * weight_F[indices]
        residual_hat_BD = sparse_decode(indices, values, self.W_dec)  # no bias: the residual is centred
        variance = centred_square_sum(residual_BD).clamp_min(1e-12)  # over every rank's rows, data parallel
        loss = ratio_over_ranks((residual_hat_BD - residual_BD.detach()).pow(2).sum(), variance)
        return self.config.aux_coefficient * loss.nan_to_num(0.0)

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

    def inference_state(self) -> dict[str, torch.Tensor]:
        """The tensors inference needs; training-only buffers (usage counters) are left out."""
        return {k: v for k, v in self.state_dict().items() if k not in self.training_buffers}

    training_buffers: tuple[str, ...] = ()

    def save(self, folder: Path, metadata: dict | None = None) -> None:
        """Write the dictionary in SAELens's layout; `metadata` (model, hooks) goes into cfg.json."""
        from workbench.dictionaries.saelens_format import to_saelens

        folder.mkdir(parents=True, exist_ok=True)
        cfg, tensors = to_saelens(self, metadata or {})
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, folder / WEIGHTS_FILE)
        (folder / "cfg.json").write_text(json.dumps(cfg, indent=2))
        (folder / LEGACY_WEIGHTS_FILE).unlink(missing_ok=True)


WEIGHTS_FILE = "sae_weights.safetensors"  # SAELens's name
LEGACY_WEIGHTS_FILE = "model.safetensors"  # dictionaries written before the SAELens layout
_FAMILIES: dict[str, type[SparseCoder]] = {}


def register(arch: str):
    """Class decorator: make `cls` the family that make_dictionary builds for `arch`.

    A name that is already taken is refused: silently replacing a family would change what
    every stored dictionary of that arch loads as.
    """

    def decorate(cls: type[SparseCoder]) -> type[SparseCoder]:
        taken = _FAMILIES.get(arch)
        # The same class defined again (a module reloaded) is the same family, not a clash.
        if taken is not None and _qualified_name(taken) != _qualified_name(cls):
            raise DictionaryError(
                f"Architecture '{arch}' is already registered by {_qualified_name(taken)}; "
                f"choose another name for {_qualified_name(cls)}."
            )
        _FAMILIES[arch] = cls
        return cls

    return decorate


def _qualified_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def families(trainable: bool = False) -> list[str]:
    """The registered dictionary families in registration order; with trainable, those `workbench train` can
    train (what --arch accepts: inference-only families such as imported JumpReLU SAEs are left out)."""
    import workbench.dictionaries.batchtopk  # noqa: F401  (importing registers the families)
    import workbench.dictionaries.choice  # noqa: F401
    import workbench.dictionaries.clt  # noqa: F401
    import workbench.dictionaries.matryoshka  # noqa: F401
    import workbench.dictionaries.mp  # noqa: F401
    import workbench.dictionaries.topafa  # noqa: F401
    import workbench.dictionaries.topk  # noqa: F401

    return [arch for arch, cls in _FAMILIES.items() if cls.trainable or not trainable]


def make_dictionary(config: DictionaryConfig) -> SparseCoder:
    if config.arch not in families():
        raise DictionaryError(f"Unknown architecture '{config.arch}'; available: {', '.join(sorted(_FAMILIES))}.")
    return _FAMILIES[config.arch](config)


def load_dictionary(folder: str | Path, expected_arch: str | None = None) -> SparseCoder:
    """Load a dictionary folder: ours, or one SAELens wrote (see saelens_format.from_saelens).

    Refuses pickles and, with expected_arch, a dictionary of another family.
    """
    from workbench.dictionaries.saelens_format import from_saelens

    folder = Path(folder)
    pickles = (".pt", ".pth", ".bin", ".pkl", ".ckpt")
    weights = next((folder / f for f in (WEIGHTS_FILE, LEGACY_WEIGHTS_FILE) if (folder / f).exists()), None)
    offered_pickle = folder.suffix in pickles or (
        folder.is_dir() and weights is None and any(p.suffix in pickles for p in folder.iterdir())
    )
    if offered_pickle:
        raise DictionaryError(
            f"{folder} is a pickle checkpoint; the workbench loads only safetensors, because unpickling can run "
            "arbitrary code. Convert it with torch.load in a trusted session and save_file from safetensors."
        )
    if not (folder / "cfg.json").exists() or weights is None:
        raise DictionaryError(f"{folder} is not a dictionary folder: it needs cfg.json and {WEIGHTS_FILE}.")
    try:
        cfg = json.loads((folder / "cfg.json").read_text())
    except json.JSONDecodeError as error:
        raise DictionaryError(f"{folder / 'cfg.json'} is not valid JSON ({error}).") from None
    tensors = load_file(weights)
    if weights.name == LEGACY_WEIGHTS_FILE:  # our own pre-SAELens layout: cfg.json is our config
        config = DictionaryConfig(**cfg)
        tensors = _upgrade_legacy_tensors(tensors, config)
    else:
        config, tensors = from_saelens(cfg, tensors, source=folder)
    if expected_arch is not None and config.arch != expected_arch:
        raise DictionaryError(f"{folder} holds a '{config.arch}' dictionary, not '{expected_arch}'.")
    return dictionary_from_state(config, tensors, folder)


def dictionary_from_state(
    config: DictionaryConfig, tensors: dict[str, torch.Tensor], source: Path | str
) -> SparseCoder:
    """The dictionary `config` describes, holding `tensors`; refused when they do not match its family."""
    model = make_dictionary(config)
    try:
        missing, unexpected = model.load_state_dict(tensors, strict=False)
    except RuntimeError as error:  # a tensor of the wrong shape
        raise DictionaryError(f"{source}: the weights do not fit its configuration ({error}).") from None
    missing = [m for m in missing if m not in model.training_buffers]
    if missing or unexpected:
        raise DictionaryError(
            f"{source}: the weights do not match a '{config.arch}' dictionary "
            f"(missing {missing or 'none'}, unexpected {unexpected or 'none'})."
        )
    return model


def _upgrade_legacy_tensors(tensors: dict[str, torch.Tensor], config: DictionaryConfig) -> dict[str, torch.Tensor]:
    """Before the SAELens layout, BatchTopK kept one scalar threshold and an 'initialised' flag."""
    tensors = dict(tensors)
    tensors.pop("threshold_initialised", None)
    if "threshold" in tensors and tensors["threshold"].dim() == 0:
        tensors["threshold"] = tensors["threshold"].expand(config.n_latents).clone()
    return tensors
