"""Mutual-choice and feature-choice SAEs with aux_zipf_loss (Ayonrinde 2024).

Both treat sparsity as a budget of k * batch token-latent matches, shared out adaptively:
- mutual choice: the k * batch largest activations of the whole batch (the same selection as
  BatchTopK; what differs is the auxiliary loss);
- feature choice: each latent takes its m = k * batch / latents strongest tokens, so every
  latent is used equally often in training and no latent can die.
At inference both fire by a learned threshold (JumpReLU), per latent for feature choice.

aux_zipf_loss generalises AuxK from dead latents to under-used ones. Our reading of the paper,
written out because it leaves the exact form open: latent usage (the fraction of tokens a latent
fires on, a moving average) is expected to follow a Zipf law over latents ranked by usage, with
the shares summing to k per token. A latent below its expected share is under-used, with weight
1 - usage / expected (1 for a dead latent); the top aux_k under-used latents, their activations
scaled by that weight, reconstruct the residual as in AuxK.
"""

from __future__ import annotations

import torch

from workbench.dictionaries.base import DictionaryConfig, register
from workbench.dictionaries.batchtopk import BatchTopKSAE
from workbench.distributed import active, global_rows, mean_rows, threshold_over_ranks

USAGE_MOMENTUM = 0.99


class ZipfAuxMixin:
    """Tracks each latent's usage and replaces the AuxK dead-latent loss with aux_zipf_loss."""

    # Set by the SparseCoder this is mixed into, and the buffer registered in __init__.
    config: DictionaryConfig
    usage: torch.Tensor
    training_buffers: tuple[str, ...] = ("usage",)

    def __init__(self, config):
        super().__init__(config)
        self.register_buffer("usage", torch.zeros(self.config.n_latents))

    def zipf_expected_usage(self) -> torch.Tensor:
        """Expected usage of each latent, by its usage rank: k * r^-alpha / sum_j j^-alpha."""
        alpha = self.config.extra.get("zipf_alpha", 1.0)
        n = self.config.n_latents
        shares = torch.arange(1, n + 1, dtype=torch.float32, device=self.usage.device).pow(-alpha)
        expected_by_rank = self.config.k * shares / shares.sum()
        ranks = self.usage.argsort(descending=True)
        expected = torch.empty_like(self.usage)
        expected[ranks] = expected_by_rank
        return expected

    def auxiliary_loss(self, pre_BF, f_BF, residual_BD, dead_F, encoder_input_BD=None):
        if self.training:
            with torch.no_grad():
                self.usage.mul_(USAGE_MOMENTUM).add_((1 - USAGE_MOMENTUM) * mean_rows((f_BF != 0).float()))
        weight_F = (1 - self.usage / self.zipf_expected_usage()).clamp(0, 1)
        if dead_F is not None:
            weight_F = torch.where(dead_F, torch.ones_like(weight_F), weight_F)
        return self.residual_aux_loss(pre_BF, residual_BD, weight_F > 0, weight_F, encoder_input_BD)


@register("mutualchoice")
class MutualChoiceSAE(ZipfAuxMixin, BatchTopKSAE):
    """BatchTopK's selection with aux_zipf_loss."""


@register("featurechoice")
class FeatureChoiceSAE(ZipfAuxMixin, BatchTopKSAE):
    per_latent_threshold = True  # each latent has its own capacity, so its own threshold

    def select(self, pre_BF: torch.Tensor) -> torch.Tensor:
        """Each latent keeps its m strongest tokens of the batch."""
        n_latents = pre_BF.shape[1]
        batch = global_rows(pre_BF.shape[0])  # data parallel: the strongest tokens of the global batch
        m = max(1, min(batch, round(self.config.k * batch / n_latents)))
        values, indices = pre_BF.relu().topk(min(m, pre_BF.shape[0]), dim=0, sorted=False)
        if active():
            values = values * (values >= threshold_over_ranks(values, m, dim=0))
        return torch.zeros_like(pre_BF).scatter_(0, indices, values)
