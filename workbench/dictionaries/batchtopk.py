"""JumpReLU inference, and BatchTopK (Bussmann et al. 2024), which trains towards it.

BatchTopK keeps the k * batch largest activations across the batch, so tokens get a variable
number of latents, k on average. Inference cannot see a batch, so a threshold is learned: an
exponential moving average of the smallest activation kept in each training batch. At
inference a latent fires where its pre-activation exceeds its threshold: a JumpReLU, which is
how SAELens loads it. The threshold is stored per latent (all equal for BatchTopK) because
imported JumpReLU SAEs and feature-choice SAEs have one threshold per latent.
"""

from __future__ import annotations

import torch

from workbench.dictionaries.base import DictionaryError, SparseCoder, SparseOutput, register
from workbench.dictionaries.sparse_ops import decode_pairs, gather_pairs
from workbench.distributed import active, any_over_ranks, global_rows, min_over_ranks, threshold_over_ranks


def batch_topk_activations(pre_BF: torch.Tensor, k: int) -> torch.Tensor:
    flat = pre_BF.relu().flatten()
    n_kept = k * global_rows(pre_BF.shape[0])  # data parallel: the k * batch largest of the global batch
    values, indices = flat.topk(min(n_kept, flat.numel()), sorted=False)
    if active():
        kept = values >= threshold_over_ranks(values, n_kept)
        values, indices = values[kept], indices[kept]
    return torch.zeros_like(flat).scatter_(0, indices, values).view_as(pre_BF)


@register("jumprelu")
class JumpReLUSAE(SparseCoder):
    """Inference only: a latent fires with its pre-activation where that exceeds its threshold.

    This is the family of dictionaries imported from SAELens (JumpReLU, and ReLU as threshold 0).
    """

    trainable = False  # only BatchTopK and feature choice, its subclasses, learn thresholds
    threshold_momentum = 0.99
    per_latent_threshold = False  # one threshold for all latents (BatchTopK); feature choice learns one per latent
    threshold: torch.Tensor  # buffer [latents], registered in __init__

    def __init__(self, config):
        super().__init__(config)
        self.register_buffer("threshold", torch.zeros(config.n_latents))

    def encode(self, x_BD: torch.Tensor) -> torch.Tensor:
        pre_BF = self.pre_activations(x_BD)
        return pre_BF.relu() * (pre_BF > self.threshold)

    def forward(
        self, x_BD: torch.Tensor, dead_F: torch.Tensor | None = None, target_BD: torch.Tensor | None = None
    ) -> SparseOutput:
        raise DictionaryError(
            "A JumpReLU dictionary is for inference (imported from SAELens); the workbench trains "
            "its JumpReLU SAEs as batchtopk. Use --arch batchtopk."
        )

    @torch.no_grad()
    def fold_scales(self, input_scale: float, target_scale: float) -> None:
        super().fold_scales(input_scale, target_scale)
        self.threshold.div_(target_scale)  # a latent's activation scales like the target

    @torch.no_grad()
    def update_threshold(self, f_BF: torch.Tensor) -> None:
        """Move the threshold towards the smallest activation kept this batch (per latent, or one for all)."""
        kept = f_BF > 0  # data parallel: the smallest kept over every rank's rows
        if not bool(any_over_ranks(kept.any())):
            return
        if self.per_latent_threshold:
            smallest_F = min_over_ranks(f_BF.masked_fill(~kept, float("inf")).min(dim=0).values)
            seen_F = any_over_ranks(kept.any(dim=0))
        else:
            smallest_F = min_over_ranks(f_BF.masked_fill(~kept, float("inf")).min()).expand_as(self.threshold)
            seen_F = torch.ones_like(self.threshold, dtype=torch.bool)
        fresh_F = seen_F & (self.threshold == 0)  # a latent's first observation sets its threshold
        blended_F = self.threshold_momentum * self.threshold + (1 - self.threshold_momentum) * smallest_F
        self.threshold.copy_(torch.where(fresh_F, smallest_F, torch.where(seen_F, blended_F, self.threshold)))


@register("batchtopk")
class BatchTopKSAE(JumpReLUSAE):
    trainable = True  # learns its inference threshold while training

    def select(self, pre_BF: torch.Tensor) -> torch.Tensor:
        """Training-time activations: the k * batch largest of the batch."""
        return batch_topk_activations(pre_BF, self.config.k)

    def auxiliary_loss(
        self,
        pre_BF: torch.Tensor,
        f_BF: torch.Tensor,
        residual_BD: torch.Tensor,
        dead_F: torch.Tensor | None,
        encoder_input_BD: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.residual_aux_loss(pre_BF, residual_BD, dead_F, encoder_input_BD=encoder_input_BD)

    def forward(
        self, x_BD: torch.Tensor, dead_F: torch.Tensor | None = None, target_BD: torch.Tensor | None = None
    ) -> SparseOutput:
        return self.sparse_forward(x_BD, dead_F, target_BD)[0]

    def sparse_forward(
        self, x_BD: torch.Tensor, dead_F: torch.Tensor | None = None, target_BD: torch.Tensor | None = None
    ) -> tuple[SparseOutput, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """The training pass through the sparse kernels (sparse_ops.py): the batch-wide selection is scored
        densely without a graph, then only the chosen (token, latent) pairs, a varying number per token,
        carry gradients. Returns the output and those pairs (rows, latents, values with gradient)."""
        target_BD = x_BD if target_BD is None else target_BD
        encoder_input_BD = self.encoder_input(x_BD)
        with torch.no_grad():
            pre_BF = encoder_input_BD @ self.W_enc + self.b_enc
            rows_N, latents_N = self.select(pre_BF).nonzero(as_tuple=True)  # sorted by row
        values_N = gather_pairs(encoder_input_BD, self.W_enc, self.b_enc, rows_N, latents_N, pre_BF).relu()
        recon_BD = decode_pairs(rows_N, latents_N, values_N, self.W_dec, x_BD.shape[0]) + self.b_dec
        if self.config.skip_connection:
            recon_BD = recon_BD + x_BD @ self.W_skip
        f_BF = torch.zeros_like(pre_BF, dtype=values_N.dtype).index_put_((rows_N, latents_N), values_N.detach())
        if self.training:
            self.update_threshold(f_BF)
        aux = self.auxiliary_loss(pre_BF, f_BF, target_BD - recon_BD, dead_F, encoder_input_BD)
        return SparseOutput(f_BF, recon_BD, aux), (rows_N, latents_N, values_N)
