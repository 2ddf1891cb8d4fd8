"""Matryoshka BatchTopK SAE (Bussmann et al. 2025): nested groups of latents.

Latents are ordered into nested prefixes (by default the first 1/8, 1/4, 1/2 and all of
them), and every prefix must reconstruct the input on its own. Early latents are pushed
towards general features, later ones add detail, which counters feature absorption.

The loop adds the full reconstruction's FVU itself, so aux_loss carries the other prefixes'
FVUs. Their sum, not their mean: Adam is invariant to a constant factor on the loss.
"""

from __future__ import annotations

import torch

from workbench.dictionaries.base import SparseOutput, register
from workbench.dictionaries.batchtopk import BatchTopKSAE
from workbench.dictionaries.sparse_ops import decode_pairs
from workbench.metrics import batch_fvu

DEFAULT_FRACTIONS = (0.125, 0.25, 0.5)


@register("matryoshka")
class MatryoshkaSAE(BatchTopKSAE):
    def prefix_sizes(self) -> list[int]:
        fractions = self.config.extra.get("prefix_fractions", DEFAULT_FRACTIONS)
        return sorted({max(1, int(f * self.config.n_latents)) for f in fractions if 0 < f < 1})

    def forward(
        self, x_BD: torch.Tensor, dead_F: torch.Tensor | None = None, target_BD: torch.Tensor | None = None
    ) -> SparseOutput:
        output, (rows_N, latents_N, values_N) = self.sparse_forward(x_BD, dead_F, target_BD)
        target_BD = x_BD if target_BD is None else target_BD
        prefix_loss = output.aux_loss.new_zeros(())
        for m in self.prefix_sizes():  # each prefix decodes only its own chosen pairs, sparsely
            keep = latents_N < m
            recon_BD = decode_pairs(rows_N[keep], latents_N[keep], values_N[keep], self.W_dec, x_BD.shape[0])
            recon_BD = recon_BD + self.b_dec
            if self.config.skip_connection:
                recon_BD = recon_BD + x_BD @ self.W_skip
            prefix_loss = prefix_loss + batch_fvu(target_BD, recon_BD)
        return output._replace(aux_loss=output.aux_loss + prefix_loss)

    def decode_prefix(self, f_BF: torch.Tensor, m: int, x_BD: torch.Tensor | None = None) -> torch.Tensor:
        """The reconstruction from the first m latents only."""
        recon = f_BF[:, :m] @ self.W_dec[:m] + self.b_dec
        if self.config.skip_connection:
            assert x_BD is not None, "a skip connection decodes with the input too"
            recon = recon + x_BD @ self.W_skip
        return recon
