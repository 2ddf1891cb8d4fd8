"""TopK SAE (Gao et al. 2024): keep the k largest pre-activations of each token.

AuxK: latents that have not fired for a while ("dead") get a second chance. The top
aux_k dead pre-activations reconstruct the main reconstruction's residual, and that
loss (weighted by aux_coefficient, 1/32) trains them towards useful directions
(SparseCoder.residual_aux_loss).

Training uses the sparse kernels of sparse_ops.py: only the k chosen latents of each token
take part in the backward pass and the decoding, which is what makes it faster than SAELens's
dense TopK (bench/train_sae.py).
"""

from __future__ import annotations

import torch

from workbench.dictionaries.base import SparseCoder, SparseOutput, register
from workbench.dictionaries.sparse_ops import gather_pre_activations, sparse_decode


def topk_activations(pre_BF: torch.Tensor, k: int) -> torch.Tensor:
    values, indices = pre_BF.topk(k, dim=-1, sorted=False)
    return torch.zeros_like(pre_BF).scatter_(-1, indices, values.relu())


@register("topk")
class TopKSAE(SparseCoder):
    def encode(self, x_BD: torch.Tensor) -> torch.Tensor:
        return topk_activations(self.pre_activations(x_BD), self.config.k)

    def forward(
        self, x_BD: torch.Tensor, dead_F: torch.Tensor | None = None, target_BD: torch.Tensor | None = None
    ) -> SparseOutput:
        target_BD = x_BD if target_BD is None else target_BD
        encoder_input_BD = self.encoder_input(x_BD)
        with torch.no_grad():  # scoring every latent needs no graph: gradients flow through the chosen k only
            pre_BF = encoder_input_BD @ self.W_enc + self.b_enc
            indices_BK = pre_BF.topk(self.config.k, dim=-1, sorted=False).indices
        values_BK = gather_pre_activations(encoder_input_BD, self.W_enc, self.b_enc, indices_BK, pre_BF).relu()
        recon_BD = sparse_decode(indices_BK, values_BK, self.W_dec) + self.b_dec
        if self.config.skip_connection:
            recon_BD = recon_BD + x_BD @ self.W_skip
        f_BF = torch.zeros_like(pre_BF).scatter_(-1, indices_BK, values_BK.detach())  # for metrics; no gradient
        aux = self.residual_aux_loss(pre_BF, target_BD - recon_BD, dead_F, encoder_input_BD=encoder_input_BD)
        return SparseOutput(f_BF, recon_BD, aux)
