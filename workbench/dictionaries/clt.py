"""Cross-layer transcoders (CLTs; Ameisen et al. 2025, circuit-tracer's main replacement model).

Layer l's features read blocks.l.mlp.hook_in, and each feature has one decoder per layer from l on: the MLP
output of layer t is reconstructed from every feature of layers l <= t,

    mlp_out_t ~ sum over l <= t of f_l @ W_dec[l][:, t - l] + b_dec[t].

Sparsity is BatchTopK per layer (the k x batch largest pre-activations of each layer's features across the
batch), trained towards a JumpReLU: a per-layer threshold follows the smallest kept activation, and inference
fires a feature where its pre-activation exceeds its layer's threshold, which circuit-tracer's CLT format holds.

It trains through the same loop as every dictionary (fit.py) by seeing the layers concatenated: the input is
[batch, layers x d] (each layer's mlp.hook_in side by side), the target likewise, and the latents are
[batch, layers x latents], layer-major. `config.extra` holds `layers` (the model layers covered, consecutive)
and `d_model`; `config.k` is per layer, `config.n_latents` the total. Decoders are stored per source layer, so
memory grows with latents x d x layers^2 / 2, not with the square of the concatenated width. Each feature's
decoders together have unit norm.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from workbench.dictionaries.base import (
    WEIGHTS_FILE,
    DictionaryConfig,
    DictionaryError,
    SparseCoder,
    SparseOutput,
    register,
)
from workbench.dictionaries.sparse_ops import decode_pairs


def clt_config(layers: list[int], d_model: int, latents_per_layer: int, k: int) -> DictionaryConfig:
    """The config of a CLT over `layers` (consecutive model layers) with `latents_per_layer` features each."""
    if not layers or layers != list(range(layers[0], layers[0] + len(layers))):
        raise DictionaryError(f"A cross-layer transcoder covers consecutive layers (e.g. 0-29); got {layers}.")
    width = len(layers) * d_model
    return DictionaryConfig(
        arch="clt",
        d_in=width,
        d_out=width,
        n_latents=len(layers) * latents_per_layer,
        k=k,
        transcoder=True,
        extra={"layers": list(layers), "d_model": d_model},
    )


@register("clt")
class CrossLayerTranscoder(SparseCoder):
    threshold_momentum = 0.99

    def __init__(self, config: DictionaryConfig):
        nn.Module.__init__(self)  # not SparseCoder's: the weights here are per layer, not one dense matrix
        self.config = config
        if config.skip_connection:
            raise DictionaryError("Cross-layer transcoders have no skip connection.")
        if "layers" not in config.extra or "d_model" not in config.extra:
            raise DictionaryError("A cross-layer transcoder's config needs extra.layers and extra.d_model.")
        L, d = self.n_layers, self.d_model
        F = self.latents_per_layer
        self.W_enc = nn.Parameter(torch.randn(L, d, F) / d**0.5)
        self.b_enc = nn.Parameter(torch.zeros(L, F))
        decoders = []
        for source in range(L):
            decoder = torch.randn(F, L - source, d)
            decoders.append(nn.Parameter(decoder / decoder.flatten(1).norm(dim=1)[:, None, None]))
        self.W_dec = nn.ParameterList(decoders)  # type: ignore[assignment]  # W_dec[s]: [F, layers from s on, d]
        self.b_dec = nn.Parameter(torch.zeros(L * d))
        self.register_buffer("threshold", torch.zeros(L, F))

    threshold: torch.Tensor

    @property
    def layers(self) -> list[int]:
        return list(self.config.extra["layers"])

    @property
    def n_layers(self) -> int:
        return len(self.config.extra["layers"])

    @property
    def d_model(self) -> int:
        return int(self.config.extra["d_model"])

    @property
    def latents_per_layer(self) -> int:
        return self.config.n_latents // self.n_layers

    # -- per layer: what attribution graphs and interventions use -------------------------------------------

    def layer_index(self, layer: int) -> int:
        """Position of model layer `layer` among the CLT's layers."""
        return layer - self.layers[0]

    def layer_pre_activations(self, layer: int, x_TD: torch.Tensor) -> torch.Tensor:
        i = self.layer_index(layer)
        return x_TD @ self.W_enc[i] + self.b_enc[i]

    def layer_encode(self, layer: int, x_TD: torch.Tensor) -> torch.Tensor:
        pre = self.layer_pre_activations(layer, x_TD)
        return pre.relu() * (pre > self.threshold[self.layer_index(layer)])

    def decode_into(self, layer: int, features: dict[int, torch.Tensor]) -> torch.Tensor:
        """Layer `layer`'s MLP output reconstructed from the features of every covered layer up to it [T, d]."""
        t = self.layer_index(layer)
        d = self.d_model
        out = self.b_dec[t * d : (t + 1) * d]
        for source, acts in features.items():
            s = self.layer_index(source)
            if s <= t:
                out = out + acts @ self.W_dec[s][:, t - s]
        return out

    def writes(self, layer: int, feature: int) -> dict[int, torch.Tensor]:
        """Feature `feature` of layer `layer`: its decoder into each layer it writes to."""
        s = self.layer_index(layer)
        return {self.layers[s + j]: self.W_dec[s][feature, j] for j in range(self.n_layers - s)}

    # -- concatenated: what the training loop sees ----------------------------------------------------------

    def _pre(self, x_BD: torch.Tensor) -> torch.Tensor:
        x = x_BD.view(x_BD.shape[0], self.n_layers, self.d_model)
        return torch.einsum("bld,ldf->blf", x, self.W_enc) + self.b_enc  # [B, L, F]

    def pre_activations(self, x_BD: torch.Tensor) -> torch.Tensor:
        return self._pre(x_BD).flatten(1)

    def encode(self, x_BD: torch.Tensor) -> torch.Tensor:
        pre = self._pre(x_BD)
        return (pre.relu() * (pre > self.threshold)).flatten(1)

    def decode(self, f_BF: torch.Tensor, x_BD: torch.Tensor | None = None) -> torch.Tensor:
        B, L, F, d = f_BF.shape[0], self.n_layers, self.latents_per_layer, self.d_model
        f = f_BF.view(B, L, F)
        recon = self.b_dec.expand(B, L * d).clone()
        for s in range(L):
            rows, latents = f[:, s].nonzero(as_tuple=True)
            if len(rows):
                values = f[:, s][rows, latents]
                written = decode_pairs(rows, latents, values, self.W_dec[s].reshape(F, -1), B)
                recon = recon + nn.functional.pad(written, (s * d, 0))
        return recon

    def forward(
        self, x_BD: torch.Tensor, dead_F: torch.Tensor | None = None, target_BD: torch.Tensor | None = None
    ) -> SparseOutput:
        pre = self._pre(x_BD)  # [B, L, F]
        B, L, F = pre.shape
        k = min(self.config.k * B, B * F)
        by_layer = pre.relu().transpose(0, 1).reshape(L, B * F)
        with torch.no_grad():
            indices = by_layer.topk(k, dim=1, sorted=False).indices
        kept = torch.zeros_like(by_layer).scatter(1, indices, by_layer.gather(1, indices))
        f = kept.view(L, B, F).transpose(0, 1)
        if self.training:
            self._update_threshold(f.detach())
        f_BF = f.reshape(B, L * F)
        return SparseOutput(f_BF.detach(), self.decode(f_BF), pre.new_zeros(()))

    @torch.no_grad()
    def _update_threshold(self, f: torch.Tensor) -> None:
        """Each layer's threshold moves towards the smallest activation it kept this batch."""
        smallest = f.masked_fill(f <= 0, float("inf")).amin(dim=(0, 2))  # [L]
        seen = torch.isfinite(smallest)
        smallest = torch.where(seen, smallest, torch.zeros_like(smallest))[:, None].expand_as(self.threshold)
        fresh = seen[:, None] & (self.threshold == 0)
        blended = self.threshold_momentum * self.threshold + (1 - self.threshold_momentum) * smallest
        self.threshold.copy_(torch.where(fresh, smallest, torch.where(seen[:, None], blended, self.threshold)))

    @torch.no_grad()
    def fold_scales(self, input_scale: float, target_scale: float) -> None:
        super().fold_scales(input_scale, target_scale)
        self.threshold.div_(target_scale)

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        for decoder in self.W_dec:
            decoder.data /= decoder.data.flatten(1).norm(dim=1).clamp_min(1e-8)[:, None, None]

    @torch.no_grad()
    def remove_parallel_gradient(self) -> None:
        for decoder in self.W_dec:
            if decoder.grad is None:
                continue
            parallel = (decoder.grad * decoder.data).flatten(1).sum(1)[:, None, None]
            decoder.grad -= parallel * decoder.data

    def save(self, folder: Path, metadata: dict | None = None) -> None:
        """Our own layout (SAELens has no cross-layer format): cfg.json with the config, and the weights."""
        folder.mkdir(parents=True, exist_ok=True)
        cfg = {"architecture": "cross_layer_transcoder", "workbench": asdict(self.config), "metadata": metadata or {}}
        save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}, folder / WEIGHTS_FILE)
        (folder / "cfg.json").write_text(json.dumps(cfg, indent=2))
