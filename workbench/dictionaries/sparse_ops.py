"""Sparse kernels for training TopK-style dictionaries (CPU and CUDA: embedding_bag and CSR products).

A TopK step touches k of the n latents per token, but written densely it multiplies by every
latent five times (encoder forward and backward, decoder forward and two backward products).
Here only the encoder forward is dense (it has to score every latent):
- the decoder is an `embedding_bag` over the chosen latents (sparsify decodes the same way);
- the chosen pre-activations are gathered with a backward pass that touches only them: the
  encoder's weight gradient is a sparse (CSR) product, its bias gradient an index_add.
Measured on 2 cores (4096 x 576 inputs, 4608 latents, k 32): the encoder backward 0.17 s -> 0.01 s
and the decoder forward+backward 0.38 s -> ~0.02 s. Gradients equal the dense ones (tests/test_train.py).

The batch-level families (BatchTopK, Matryoshka, the choice families) choose a varying number of
latents per token, so their kernels take (row, latent) pairs sorted by row, with per-row offsets:
`gather_pairs` and `decode_pairs`. Measured here (one training step, 4096 x 576, 4608 latents, k 32,
against the same family's dense autograd path): BatchTopK 0.94 s against 1.90 s (2.0x), Matryoshka
0.95 s against 3.60 s (3.8x: each prefix decodes only its own pairs), feature choice 1.46 s against
2.45 s (1.7x). What is left is the dense scoring and the batch-wide top-k. The same ops run on CUDA; sparsify's Triton decoder is the GPU
reference to compare against (bench/gpu.py, on a GPU).
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

# CSR tensors are "beta" in torch; we use only their product with a dense matrix, which the tests check.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")


class _GatherPreActivations(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input_BD, W_enc, b_enc, indices_BK, pre_BF):
        ctx.save_for_backward(input_BD, W_enc, indices_BK)
        return pre_BF.gather(-1, indices_BK)

    @staticmethod
    def backward(ctx, grad_BK):
        input_BD, W_enc, indices_BK = ctx.saved_tensors
        n_latents = W_enc.shape[1]
        grad_input = grad_W_enc = grad_b_enc = None
        flat_latents, flat_grad = indices_BK.flatten(), grad_BK.flatten()
        if ctx.needs_input_grad[0]:
            grad_input = F.embedding_bag(indices_BK, W_enc.T.contiguous(), per_sample_weights=grad_BK, mode="sum")
        if ctx.needs_input_grad[1]:
            rows = torch.arange(indices_BK.shape[0], device=grad_BK.device).repeat_interleave(indices_BK.shape[1])
            grad_W_enc = _encoder_weight_grad(rows, flat_latents, flat_grad, input_BD, n_latents)
        if ctx.needs_input_grad[2]:
            grad_b_enc = torch.zeros(n_latents, dtype=grad_BK.dtype, device=grad_BK.device).index_add_(
                0, flat_latents, flat_grad
            )
        return grad_input, grad_W_enc, grad_b_enc, None, None


def gather_pre_activations(
    input_BD: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor, indices_BK: torch.Tensor, pre_BF: torch.Tensor
) -> torch.Tensor:
    """(input @ W_enc + b_enc) at indices, taken from the already computed `pre_BF`, differentiable sparsely.

    Indices must be distinct within a row (as top-k's are).
    """
    return _GatherPreActivations.apply(input_BD, W_enc, b_enc, indices_BK, pre_BF.detach())


def sparse_decode(indices_BK: torch.Tensor, values_BK: torch.Tensor, W_dec: torch.Tensor) -> torch.Tensor:
    """sum_j values[b, j] * W_dec[indices[b, j]], without a dense latent matrix."""
    return F.embedding_bag(indices_BK, W_dec, per_sample_weights=values_BK, mode="sum")


def _encoder_weight_grad(
    rows_N: torch.Tensor, latents_N: torch.Tensor, grad_N: torch.Tensor, input_BD: torch.Tensor, n_latents: int
) -> torch.Tensor:
    """d loss / d W_enc [d, latents] from the gradients of N chosen (row, latent) pre-activations: one sparse
    (latent-major CSR) times dense product, touching only the chosen entries."""
    order = latents_N.argsort()
    row_starts = torch.zeros(n_latents + 1, dtype=torch.long, device=grad_N.device)
    row_starts[1:] = torch.bincount(latents_N, minlength=n_latents).cumsum(0)
    grad_FB = torch.sparse_csr_tensor(
        row_starts, rows_N[order], grad_N[order].float(), (n_latents, input_BD.shape[0]), check_invariants=False
    )
    # Under autocast (train --dtype bfloat16) this product would be cast to bf16, which the CPU's sparse kernels
    # do not implement; the gradient is accumulated in the parameters' fp32 instead.
    with torch.autocast(input_BD.device.type, enabled=False):
        return (grad_FB @ input_BD.float()).T


def row_offsets(rows_N: torch.Tensor, n_rows: int) -> torch.Tensor:
    """Where each row's entries start in a row-sorted list of pairs (embedding_bag's offsets; empty rows allowed)."""
    counts = torch.bincount(rows_N, minlength=n_rows)
    return torch.cumsum(counts, 0) - counts


class _GatherPairs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input_BD, W_enc, b_enc, rows_N, latents_N, pre_BF):
        ctx.save_for_backward(input_BD, W_enc, rows_N, latents_N)
        return pre_BF[rows_N, latents_N].to(input_BD.dtype)

    @staticmethod
    def backward(ctx, grad_N):
        input_BD, W_enc, rows_N, latents_N = ctx.saved_tensors
        n_latents = W_enc.shape[1]
        grad_input = grad_W_enc = grad_b_enc = None
        if ctx.needs_input_grad[0]:
            grad_input = F.embedding_bag(
                latents_N,
                W_enc.T.contiguous(),
                row_offsets(rows_N, input_BD.shape[0]),
                per_sample_weights=grad_N,
                mode="sum",
            )
        if ctx.needs_input_grad[1]:
            grad_W_enc = _encoder_weight_grad(rows_N, latents_N, grad_N, input_BD, n_latents)
        if ctx.needs_input_grad[2]:
            grad_b_enc = torch.zeros(n_latents, dtype=grad_N.dtype, device=grad_N.device).index_add_(
                0, latents_N, grad_N
            )
        return grad_input, grad_W_enc, grad_b_enc, None, None, None


def gather_pairs(
    input_BD: torch.Tensor,
    W_enc: torch.Tensor,
    b_enc: torch.Tensor,
    rows_N: torch.Tensor,
    latents_N: torch.Tensor,
    pre_BF: torch.Tensor,
) -> torch.Tensor:
    """(input @ W_enc + b_enc)[rows, latents] from the computed `pre_BF`, differentiable sparsely.

    Pairs must be distinct and sorted by row (as `nonzero()` returns them).
    """
    return _GatherPairs.apply(input_BD, W_enc, b_enc, rows_N, latents_N, pre_BF.detach())


def decode_pairs(
    rows_N: torch.Tensor, latents_N: torch.Tensor, values_N: torch.Tensor, W_dec: torch.Tensor, n_rows: int
) -> torch.Tensor:
    """sum over a row's pairs of value * W_dec[latent], [n_rows, d_out], without a dense latent matrix."""
    return F.embedding_bag(latents_N, W_dec, row_offsets(rows_N, n_rows), per_sample_weights=values_N, mode="sum")
