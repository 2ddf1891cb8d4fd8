"""A codebook bottleneck (Tamkin, Taufeeque & Goodman, "Codebook Features"; taufeeque9/codebook-features).

Placed after a sublayer, it replaces the sublayer's output x with the sum (or mean) of the k
codebook vectors most cosine-similar to x. The forward value is the quantised output; the
gradient is straight-through for x (d out / d x = identity, so the layers below still learn) and
exact for the chosen code vectors (so they move toward what they replace). The reconstruction
term ||x - out||^2 that fine-tuning adds pulls the codes toward the activations as well.

    codes_BK      which codes fired: the discrete features written to the store
    kmeans_init   initialise the codes from activations (cosine k-means)
    replace_dead  re-seed codes unused for a window of tokens with recent activations

Attaching bottlenecks to a model, fine-tuning, storing codes and steering are in workbench/codebooks/.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from workbench.errors import CodebookError


class CodebookOutput(NamedTuple):
    out_BD: torch.Tensor  # what the model sees instead of x: quantised value, straight-through gradient
    codes_BK: torch.Tensor  # indices of the k codes that fired, most similar first
    similarity_BK: torch.Tensor  # their cosine similarity to x
    recon_loss: torch.Tensor  # mean ||x - quantised||^2 per token


class CodebookBottleneck(nn.Module):
    """`groups` > 1 splits x into that many equal slices (attention heads), each with its own `n_codes` codes
    and its own top-k. Code ids are global: code c belongs to group c // n_codes, and codes_BK holds the
    groups' k codes one group after another ([..., groups * k])."""

    since_used: torch.Tensor  # buffer [groups * n_codes], registered in __init__

    def __init__(self, d: int, n_codes: int, k: int = 1, reduce: str = "sum", groups: int = 1):
        super().__init__()
        if not 1 <= k <= n_codes:
            raise CodebookError(f"k must be between 1 and the codebook size ({n_codes}); got k={k}.")
        if reduce not in ("sum", "mean"):
            raise CodebookError(f"reduce must be 'sum' or 'mean', not '{reduce}'.")
        if groups < 1 or d % groups:
            raise CodebookError(f"Cannot split {d} dimensions into {groups} equal groups.")
        self.d, self.n_codes, self.k, self.reduce, self.groups = d, n_codes, k, reduce, groups
        self.d_group = d // groups
        self.codebook = nn.Parameter(torch.randn(groups * n_codes, self.d_group) / self.d_group**0.5)
        # Tokens since each code last fired, for dead-code replacement (a buffer, so it is checkpointed).
        self.register_buffer("since_used", torch.zeros(groups * n_codes, dtype=torch.long))

    @property
    def total_codes(self) -> int:
        return self.groups * self.n_codes

    def scores(self, x_BD: torch.Tensor) -> torch.Tensor:
        """[..., groups, n_codes]: cosine similarity of each group's slice of x to that group's codes."""
        x = F.normalize(x_BD.reshape(*x_BD.shape[:-1], self.groups, self.d_group), dim=-1)
        codes = F.normalize(self.codebook, dim=-1).reshape(self.groups, self.n_codes, self.d_group)
        return torch.einsum("...gd,gnd->...gn", x, codes)

    def forward(self, x_BD: torch.Tensor) -> CodebookOutput:
        if x_BD.shape[-1] != self.d:
            raise CodebookError(
                f"The codebook reads {self.d}-dimensional activations; this site gives {x_BD.shape[-1]}."
            )
        with torch.no_grad():
            similarity, local = self.scores(x_BD).topk(self.k, dim=-1)  # [..., groups, k]
            offsets = torch.arange(self.groups, device=x_BD.device)[:, None] * self.n_codes
            codes_BK = (local + offsets).flatten(-2)
            similarity_BK = similarity.flatten(-2)
        quantised = self.decode(codes_BK)  # gradient reaches exactly the chosen code vectors
        recon_loss = (x_BD - quantised).pow(2).sum(-1).mean()  # pulls the codes toward x and x toward its codes
        # Straight-through for x: the value is `quantised`, the gradient to x is the identity.
        out_BD = quantised + (x_BD - x_BD.detach())
        if self.training:
            with torch.no_grad():
                fired = torch.zeros(self.total_codes, dtype=torch.bool, device=x_BD.device)
                fired[codes_BK.reshape(-1)] = True
                self.since_used += codes_BK.reshape(-1, self.groups * self.k).shape[0]
                self.since_used[fired] = 0
        return CodebookOutput(out_BD, codes_BK, similarity_BK, recon_loss)

    def decode(self, codes_BK: torch.Tensor) -> torch.Tensor:
        """The bottleneck's output for a set of codes (k per group, groups in order): per group their sum, or mean."""
        vectors = self.codebook[codes_BK].reshape(*codes_BK.shape[:-1], self.groups, self.k, self.d_group)
        quantised = vectors.sum(-2).flatten(-2)
        return quantised / self.k if self.reduce == "mean" else quantised

    def group_slots(self, code: int) -> slice:
        """Where in codes_BK the k codes of `code`'s group sit."""
        group = code // self.n_codes
        return slice(group * self.k, (group + 1) * self.k)

    @torch.no_grad()
    def kmeans_init(self, x_ND: torch.Tensor, iterations: int = 20, seed: int = 0) -> None:
        """Cosine k-means (k-means++ seeding) on activations x [n, d], per group; code vectors get the mean
        (unnormalised) of their cluster, divided by k for reduce="sum", so the output's scale matches what it
        replaces. Needs at least n_codes activations."""
        if len(x_ND) < self.n_codes:
            raise CodebookError(
                f"k-means initialisation needs at least {self.n_codes} activations (one per code); got {len(x_ND)}."
            )
        generator = torch.Generator().manual_seed(seed)
        for group in range(self.groups):
            x = x_ND[:, group * self.d_group : (group + 1) * self.d_group]
            centres = _cosine_kmeans(x, self.n_codes, iterations, generator)
            # With reduce="sum" the output adds k codes that each resemble x, so each starts at 1/k of its centre.
            self.codebook[group * self.n_codes : (group + 1) * self.n_codes] = (
                centres / self.k if self.reduce == "sum" else centres
            )
        self.since_used.zero_()

    @torch.no_grad()
    def replace_dead(self, recent_ND: torch.Tensor, window_tokens: int, seed: int = 0) -> int:
        """Re-seed codes that have not fired for `window_tokens` tokens with (their group's slice of) random recent
        activations."""
        dead = torch.nonzero(self.since_used >= window_tokens).flatten()
        if len(dead) == 0 or len(recent_ND) == 0:
            return 0
        generator = torch.Generator().manual_seed(seed)
        picks = torch.randint(0, len(recent_ND), (len(dead),), generator=generator)
        slices = recent_ND[picks].reshape(len(dead), self.groups, self.d_group)
        groups = (dead // self.n_codes).to(slices.device)
        self.codebook[dead] = slices[torch.arange(len(dead)), groups].to(self.codebook.dtype)
        self.since_used[dead] = 0
        return len(dead)


def _cosine_kmeans(x_ND: torch.Tensor, n: int, iterations: int, generator: torch.Generator) -> torch.Tensor:
    """n centres of x by cosine k-means with k-means++ seeding; each centre is its cluster's (unnormalised) mean."""
    unit = F.normalize(x_ND, dim=-1)
    # k-means++ seeding on cosine distance: each new centre is drawn in proportion to its squared distance
    # from the nearest centre so far, so separate clusters rarely share a seed.
    chosen = [int(torch.randint(0, len(x_ND), (1,), generator=generator))]
    nearest = 1 - unit @ unit[chosen[0]]
    for _ in range(n - 1):
        weights = nearest.clamp_min(0) ** 2
        pick = (
            int(torch.multinomial(weights, 1, generator=generator))
            if weights.sum() > 0
            else int(torch.randint(0, len(x_ND), (1,), generator=generator))
        )
        chosen.append(pick)
        nearest = torch.minimum(nearest, 1 - unit @ unit[pick])
    centres = x_ND[chosen].clone()
    for _ in range(iterations):
        assignment = (unit @ F.normalize(centres, dim=-1).T).argmax(-1)
        sums = torch.zeros_like(centres).index_add_(0, assignment, x_ND)
        counts = torch.bincount(assignment, minlength=n)
        filled = counts > 0
        centres[filled] = sums[filled] / counts[filled, None]
    return centres
