"""Metrics, as docs/ARCHITECTURE.md defines them (peers disagree; these are ours).

FVU = sum ||x - x_hat||^2 / sum ||x - mu||^2, mu the per-dimension mean over the evaluation
set. L0 = mean number of non-zero latents per token. Dead fraction = share of latents
that did not fire over the last N training tokens (N recorded with the result).
"""

from __future__ import annotations

import torch

from workbench.distributed import any_over_ranks, centred_square_sum, global_rows, ratio_over_ranks


class FVUAccumulator:
    """Exact FVU over many batches: keeps sums, not tokens (sum of squares minus n * mean^2)."""

    def __init__(self) -> None:
        self.error = 0.0
        self.n = 0
        self.sum_D: torch.Tensor | None = None
        self.sum_sq = 0.0

    def add(self, target_BD: torch.Tensor, recon_BD: torch.Tensor) -> None:
        target = target_BD.double()
        self.error += (target - recon_BD.double()).pow(2).sum().item()
        self.sum_D = target.sum(0) if self.sum_D is None else self.sum_D + target.sum(0)
        self.sum_sq += target.pow(2).sum().item()
        self.n += target.shape[0]

    def value(self) -> float:
        assert self.sum_D is not None, "value() follows at least one add()"
        total_variance = self.sum_sq - (self.sum_D.pow(2).sum().item() / self.n)
        return self.error / max(total_variance, 1e-12)


def batch_fvu(target_BD: torch.Tensor, recon_BD: torch.Tensor) -> torch.Tensor:
    """FVU of one batch, with the batch's own mean (what the training loss and progress bar use)."""
    # Data parallel (workbench/distributed.py): the ratio and the mean are over every rank's rows.
    return ratio_over_ranks((target_BD - recon_BD).pow(2).sum(), centred_square_sum(target_BD).clamp_min(1e-12))


def l0(f_BF: torch.Tensor) -> float:
    return (f_BF != 0).sum(-1).float().mean().item()


class DeadLatentTracker:
    """Tokens since each latent last fired; dead = silent for at least `window` tokens."""

    def __init__(self, n_latents: int, window: int, device: torch.device | str = "cpu"):
        self.window = window
        self.tokens_since_fired = torch.zeros(n_latents, dtype=torch.long, device=device)

    def update(self, f_BF: torch.Tensor) -> None:
        # On the latents' device, without a host sync: a GPU step never waits for this. Data parallel, a latent
        # fired if it fired on any rank, and the window counts the global batch's tokens.
        fired = any_over_ranks((f_BF != 0).any(0))
        self.tokens_since_fired += global_rows(f_BF.shape[0])
        self.tokens_since_fired.masked_fill_(fired, 0)

    def dead_mask(self) -> torch.Tensor:
        return self.tokens_since_fired >= self.window

    def dead_fraction(self) -> float:
        return self.dead_mask().float().mean().item()
