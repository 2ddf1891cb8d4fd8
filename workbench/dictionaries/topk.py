"""TopK SAE (Gao et al. 2024): keep the k largest pre-activations of each token.

AuxK: latents that have not fired for a while ("dead") get a second chance. The top
aux_k dead pre-activations reconstruct the main reconstruction's residual, and that
loss (weighted by aux_coefficient, 1/32) trains them towards useful directions
(SparseCoder.residual_aux_loss).
"""

from __future__ import annotations

import torch

from workbench.dictionaries.base import SparseCoder, SparseOutput, register


def topk_activations(pre_BF: torch.Tensor, k: int) -> torch.Tensor:
    values, indices = pre_BF.topk(k, dim=-1, sorted=False)
    return torch.zeros_like(pre_BF).scatter_(-1, indices, values.relu())


@register("topk")
class TopKSAE(SparseCoder):
    def encode(self, x_BD: torch.Tensor) -> torch.Tensor:
        return topk_activations(self.pre_activations(x_BD), self.config.k)

    def forward(self, x_BD: torch.Tensor, dead_F: torch.Tensor | None = None, target_BD: torch.Tensor | None = None) -> SparseOutput:
        target_BD = x_BD if target_BD is None else target_BD
        pre_BF = self.pre_activations(x_BD)
        f_BF = topk_activations(pre_BF, self.config.k)
        recon_BD = self.decode(f_BF, x_BD)
        return SparseOutput(f_BF, recon_BD, self.residual_aux_loss(pre_BF, target_BD - recon_BD, dead_F))
