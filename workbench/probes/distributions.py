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

    @classmethod
    def from_logits(cls, logits: torch.Tensor) -> OutputDistribution:
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        return cls(log_probs, log_probs.exp())

    def __getitem__(self, index) -> OutputDistribution:
        return OutputDistribution(self.log_probs[index], self.probs[index])

    def flat(self) -> OutputDistribution:
        """One row per token: [tokens, vocab]."""
        vocab = self.log_probs.shape[-1]
        return OutputDistribution(self.log_probs.reshape(-1, vocab), self.probs.reshape(-1, vocab))

    def kl_to(self, other_log_probs: torch.Tensor) -> torch.Tensor:
        """KL(self || other) per token."""
        return (self.probs * (self.log_probs - other_log_probs)).sum(-1).clamp_min(0)

    def l2_to(self, other_log_probs: torch.Tensor) -> torch.Tensor:
        """L2 norm of the probability change per token."""
        return (self.probs - other_log_probs.exp()).norm(dim=-1)
