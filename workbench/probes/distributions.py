"""The clean pass's output distribution, computed once per batch, and how far other logits are from it.

The logit lens (one comparison per layer) and layer skipping (one per skipped layer) both compare
against the same clean distribution; its log-probabilities and probabilities are computed once per batch
rather than once per comparison. Everything is in fp32, whatever the model computed in. Identical logits
give a KL of exactly 0 (the same log_softmax of the same numbers), which the last-layer skip relies on.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class OutputDistribution:
    log_probs: torch.Tensor  # [..., vocab]
    probs: torch.Tensor  # [..., vocab]
    neg_entropy: torch.Tensor  # [...]: sum of p log p

    @classmethod
    def from_logits(cls, logits: torch.Tensor) -> OutputDistribution:
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        probs = log_probs.exp()
        return cls(log_probs, probs, (probs * log_probs).sum(-1))

    def __getitem__(self, index) -> OutputDistribution:
        return OutputDistribution(self.log_probs[index], self.probs[index], self.neg_entropy[index])

    def flat(self) -> OutputDistribution:
        """One row per token: [tokens, vocab]."""
        vocab = self.log_probs.shape[-1]
        return OutputDistribution(
            self.log_probs.reshape(-1, vocab), self.probs.reshape(-1, vocab), self.neg_entropy.reshape(-1)
        )

    def kl_to(self, other_log_probs: torch.Tensor) -> torch.Tensor:
        """KL(self || other) per token."""
        return (self.probs * (self.log_probs - other_log_probs)).sum(-1).clamp_min(0)

    def kl_to_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """KL(self || softmax(logits)) per token, for [tokens, vocab] rows: sum p log p - p.z + logsumexp(z), which
        never materialises the other side's log-probabilities (the logit lens's cost is these full-vocabulary
        passes). Float32 rounding leaves ~1e-6 of the typical logit size where the two distributions are equal."""
        p_dot_z = torch.bmm(self.probs.unsqueeze(1), logits.unsqueeze(-1)).reshape(-1)
        return (self.neg_entropy - p_dot_z + torch.logsumexp(logits, dim=-1)).clamp_min(0)

    def l2_to(self, other_log_probs: torch.Tensor) -> torch.Tensor:
        """L2 norm of the probability change per token."""
        return (self.probs - other_log_probs.exp()).norm(dim=-1)
