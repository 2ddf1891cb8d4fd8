"""BatchTopK SAE (Bussmann et al. 2024): keep the k * batch largest activations across the batch.

Tokens then get a variable number of latents, k on average. Inference cannot see a batch, so a
threshold is learned: an exponential moving average of the smallest activation kept in each
training batch. At inference a latent fires where its pre-activation exceeds the threshold
(a JumpReLU, which is how SAELens loads it).
"""

from __future__ import annotations

import torch

from workbench.dictionaries.base import SparseCoder, SparseOutput, register
from workbench.dictionaries.topk import TopKSAE


def batch_topk_activations(pre_BF: torch.Tensor, k: int) -> torch.Tensor:
    flat = pre_BF.relu().flatten()
    values, indices = flat.topk(k * pre_BF.shape[0], sorted=False)
    return torch.zeros_like(flat).scatter_(0, indices, values).view_as(pre_BF)


@register("batchtopk")
class BatchTopKSAE(SparseCoder):
    threshold_momentum = 0.99

    def __init__(self, config):
        super().__init__(config)
        self.register_buffer("threshold", torch.tensor(0.0))
        self.register_buffer("threshold_initialised", torch.tensor(False))

    def encode(self, x_BD: torch.Tensor) -> torch.Tensor:
        pre_BF = self.pre_activations(x_BD)
        return pre_BF * (pre_BF > self.threshold)

    def forward(self, x_BD, dead_F=None, target_BD=None) -> SparseOutput:
        target_BD = x_BD if target_BD is None else target_BD
        pre_BF = self.pre_activations(x_BD)
        f_BF = batch_topk_activations(pre_BF, self.config.k)
        if self.training:
            self._update_threshold(f_BF)
        recon_BD = self.decode(f_BF, x_BD)
        return SparseOutput(f_BF, recon_BD, TopKSAE.auxk_loss(self, pre_BF, target_BD - recon_BD, dead_F))

    @torch.no_grad()
    def fold_scales(self, input_scale: float, target_scale: float) -> None:
        super().fold_scales(input_scale, target_scale)
        self.threshold.div_(target_scale)  # a latent's activation scales like the target

    @torch.no_grad()
    def _update_threshold(self, f_BF: torch.Tensor) -> None:
        active = f_BF[f_BF > 0]
        if active.numel() == 0:
            return
        smallest = active.min()
        if not bool(self.threshold_initialised):
            self.threshold.copy_(smallest)
            self.threshold_initialised.fill_(True)
        else:
            self.threshold.mul_(self.threshold_momentum).add_((1 - self.threshold_momentum) * smallest)
