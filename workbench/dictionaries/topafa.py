"""Top-AFA SAE (Lee et al. 2025, "Evaluating and designing sparse autoencoders by approximating
quasi-orthogonality"): each token gets as many latents as it takes to match its norm.

Latents are taken in decreasing order of activation until the norm of the activation vector,
sqrt(sum f_i^2), comes closest to the norm of the centred input: with a unit-norm, nearly
orthogonal decoder, ||f|| approximates ||x - b_dec||. No k has to be chosen; `k` caps the
latents per token (a ceiling, so that the sort is a top-k rather than over every latent). The
AFA loss, mean (||f|| - ||x - b_dec||)^2, relative to the input's mean squared norm so that it
is scale-free, is added with afa_coefficient (default 1/32), besides AuxK.
"""

from __future__ import annotations

import torch

from workbench.dictionaries.base import SparseCoder, SparseOutput, register
from workbench.distributed import ratio_over_ranks


@register("topafa")
class TopAFASAE(SparseCoder):
    def select(self, pre_BF: torch.Tensor, centred_BD: torch.Tensor) -> torch.Tensor:
        values_BK, indices_BK = pre_BF.relu().topk(self.config.k, dim=-1, sorted=True)
        cumulative_norm_BK = values_BK.pow(2).cumsum(-1).sqrt()
        target_B1 = centred_BD.norm(dim=-1, keepdim=True)
        n_kept_B1 = (cumulative_norm_BK - target_B1).abs().argmin(dim=-1, keepdim=True) + 1
        keep_BK = torch.arange(self.config.k, device=pre_BF.device) < n_kept_B1
        return torch.zeros_like(pre_BF).scatter_(-1, indices_BK, values_BK * keep_BK)

    def encode(self, x_BD: torch.Tensor) -> torch.Tensor:
        return self.select(self.pre_activations(x_BD), x_BD - self.b_dec)

    def forward(
        self, x_BD: torch.Tensor, dead_F: torch.Tensor | None = None, target_BD: torch.Tensor | None = None
    ) -> SparseOutput:
        target_BD = x_BD if target_BD is None else target_BD
        pre_BF = self.pre_activations(x_BD)
        centred_BD = x_BD - self.b_dec
        f_BF = self.select(pre_BF, centred_BD)
        recon_BD = self.decode(f_BF, x_BD)
        target_norm_B = centred_BD.norm(dim=-1).detach()
        afa = ratio_over_ranks(  # of means over every rank's rows, data parallel (equal slices)
            (f_BF.norm(dim=-1) - target_norm_B).pow(2).mean(), target_norm_B.pow(2).mean().clamp_min(1e-12)
        )
        afa_coefficient = self.config.extra.get("afa_coefficient", 1 / 32)
        aux = self.residual_aux_loss(pre_BF, target_BD - recon_BD, dead_F)
        return SparseOutput(f_BF, recon_BD, aux + afa_coefficient * afa)
