"""Matching-pursuit SAE (Costa et al. 2025): a tied, unit-norm dictionary read out greedily.

The encoder takes k steps of matching pursuit: pick the atom most correlated with the
residual, add that correlation to its coefficient, subtract its contribution from the
residual. Or it stops early, per token, once the residual's norm falls below a fraction of
the input's (`residual_threshold`). Each step explains away what earlier atoms captured, so
correlated atoms (a parent and its child) can both be used. L0 can be changed at inference
without retraining: `encode_with(x, k=..., residual_threshold=...)`.
"""

from __future__ import annotations

import torch

from workbench.dictionaries.base import SparseCoder, SparseOutput, register


@register("mp")
class MatchingPursuitSAE(SparseCoder):
    def encode_with(
        self, x_BD: torch.Tensor, k: int | None = None, residual_threshold: float | None = None
    ) -> torch.Tensor:
        if x_BD.dim() != 2:  # [batch, seq, d] from a splice or a hook: pursue each position, keep the shape
            flat = self.encode_with(x_BD.reshape(-1, x_BD.shape[-1]), k, residual_threshold)
            return flat.reshape(*x_BD.shape[:-1], flat.shape[-1])
        k = k or self.config.k
        if residual_threshold is None:
            residual_threshold = self.config.extra.get("residual_threshold")
        residual_BD = x_BD - self.b_dec
        start_norm_B = residual_BD.norm(dim=1)
        f_BF = torch.zeros(x_BD.shape[0], self.config.n_latents, dtype=x_BD.dtype, device=x_BD.device)
        active_B = torch.ones(x_BD.shape[0], dtype=torch.bool, device=x_BD.device)
        for _ in range(k):
            values_B, atoms_B = (residual_BD @ self.W_dec.T).max(dim=1)
            values_B = values_B.to(f_BF.dtype).clamp_min(0) * active_B  # autocast scores in bf16; f stays fp32
            f_BF = f_BF.scatter_add(1, atoms_B[:, None], values_B[:, None])
            residual_BD = residual_BD - values_B[:, None] * self.W_dec[atoms_B]
            if residual_threshold is not None:
                active_B = active_B & (residual_BD.norm(dim=1) > residual_threshold * start_norm_B)
                if not bool(active_B.any()):
                    break
        return f_BF

    def encode(self, x_BD: torch.Tensor) -> torch.Tensor:
        return self.encode_with(x_BD)

    def forward(
        self, x_BD: torch.Tensor, dead_F: torch.Tensor | None = None, target_BD: torch.Tensor | None = None
    ) -> SparseOutput:
        f_BF = self.encode(x_BD)
        return SparseOutput(f_BF, self.decode(f_BF, x_BD), f_BF.new_zeros(()))

    def fold_scales(self, input_scale: float, target_scale: float) -> None:
        # Tied and linear in the input: only the bias moves (input and target scales are equal for an SAE).
        self.b_dec.data.div_(target_scale)
