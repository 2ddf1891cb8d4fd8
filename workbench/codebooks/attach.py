"""Codebook bottlenecks attached to a model's sublayer outputs, code purity, and interventions.

Sites use the hook vocabulary: `blocks.{l}.attn.hook_out` (the attention output, all heads
together), `blocks.{l}.attn.hook_z` (the heads' outputs before the output projection: one
codebook per head, the paper's attention setting) and `blocks.{l}.mlp.hook_out` (the MLP output).
Each site's value is replaced by its bottleneck's output through a hook, and the codes that
fired are kept for the caller. A site can also be forced to one code at chosen positions, which
is how interventions and steering work. At attn.hook_z, code c is head c // n_codes's code.

Fine-tuning with the bottlenecks in place is finetune.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from workbench.dictionaries.codebook import CodebookBottleneck, CodebookError
from workbench.hooks import HookPoint, parse_hook
from workbench.models.families import attention_heads, decoder_layers, family_of

SITE_KINDS = ("attn.hook_out", "attn.hook_z", "mlp.hook_out")
FORCING_MODES = ("swap", "only")


def parse_site(name: str, n_layers: int) -> HookPoint:
    point = parse_hook(name, n_layers)
    if point.kind not in SITE_KINDS:
        raise CodebookError(
            f"'{name}' cannot hold a codebook: use blocks.{{l}}.attn.hook_out, blocks.{{l}}.attn.hook_z "
            f"(per head) or blocks.{{l}}.mlp.hook_out with 0 <= l < {n_layers}."
        )
    return point


def check_code(site: str, code: int, total_codes: dict[str, int]) -> None:
    """Refuse a site without a codebook, or a code id outside it; `total_codes` maps each site to its code count."""
    if site not in total_codes:
        raise CodebookError(f"No codebook at '{site}'; there are codebooks at {', '.join(total_codes)}.")
    if not 0 <= code < total_codes[site]:
        raise CodebookError(
            f"Code {code} is out of range: the codebook at {site} has codes 0 to {total_codes[site] - 1}."
        )


class CodebookModel(nn.Module):
    """A causal LM with codebook bottlenecks at some sublayer outputs."""

    # A HF causal LM: its config and submodules are per-architecture attributes that torch's stubs type as
    # `Tensor | Module`, so it is `Any` here.
    hf_model: Any

    def __init__(self, hf_model: Any, sites: list[str], n_codes: int, k: int = 1, reduce: str = "sum"):
        super().__init__()
        self.hf_model = hf_model
        n_layers = len(decoder_layers(hf_model))
        family = family_of(hf_model)
        points = [parse_site(site, n_layers) for site in sites]
        if len(set(points)) != len(points):
            raise CodebookError("A site is named twice; give each site once.")
        d = hf_model.config.hidden_size
        n_heads, d_head = attention_heads(hf_model)
        self.sites = [p.name for p in points]
        self.bottlenecks = nn.ModuleDict(
            {
                p.name.replace(".", "_"): CodebookBottleneck(n_heads * d_head, n_codes, k, reduce, groups=n_heads)
                if p.kind == "attn.hook_z"
                else CodebookBottleneck(d, n_codes, k, reduce)
                for p in points
            }
        )
        self.codes: dict[str, torch.Tensor] = {}  # site -> [batch, seq, k] from the last forward
        self.similarities: dict[str, torch.Tensor] = {}  # site -> [batch, seq, k]: each code's cosine similarity
        self.inputs: dict[str, torch.Tensor] = {}  # site -> the activations the bottleneck replaced (detached)
        self.recon_losses: dict[str, torch.Tensor] = {}
        self.forced: dict[str, list[tuple[int, slice, str]]] = {}  # site -> (code, positions, mode) to force, in order
        self.enabled = True
        self._handles = []
        for point in points:
            block: Any = decoder_layers(hf_model)[point.layer]  # a HF block: .mlp is per-architecture
            if point.kind == "attn.hook_z":  # the output projection's input: the heads' outputs, concatenated
                projection = getattr(getattr(block, family.attention), family.out_proj)
                self._handles.append(projection.register_forward_pre_hook(self._pre_hook(point.name)))
            else:  # what the sublayer adds to the residual stream (after Gemma's post-norms)
                module = family.sublayer_output(block, point.kind)
                self._handles.append(module.register_forward_hook(self._hook(point.name)))

    def bottleneck(self, site: str) -> CodebookBottleneck:
        return cast(CodebookBottleneck, self.bottlenecks[site.replace(".", "_")])

    def _quantise(self, site: str, tensor: torch.Tensor) -> torch.Tensor:
        """The bottleneck's output for what the site holds (with any forced code), recording codes and inputs."""
        if not self.enabled:  # the plain model: record what the site sees, change nothing
            self.inputs[site] = tensor.detach()
            return tensor
        bottleneck = self.bottleneck(site)
        result = bottleneck(tensor)
        out, codes = result.out_BD, result.codes_BK
        if self.forced.get(site):
            codes, out = codes.clone(), out.clone()
        # "swap": the forced code takes the place of the weakest of its group's k codes (unless it is among them
        # already), so with k > 1 the other codes still carry what they carried. "only": it fills all k slots.
        for code, positions, mode in self.forced.get(site, []):
            chosen = codes[:, positions]
            slots = chosen[..., bottleneck.group_slots(code)]
            if mode == "only":
                slots[:] = code
            else:
                present = (slots == code).any(-1, keepdim=True)
                slots[..., -1:] = torch.where(present, slots[..., -1:], torch.full_like(slots[..., -1:], code))
            codes[:, positions] = chosen
            out[:, positions] = bottleneck.decode(chosen).to(out.dtype)
        self.codes[site], self.similarities[site], self.inputs[site] = codes, result.similarity_BK, tensor.detach()
        self.recon_losses[site] = result.recon_loss
        return out

    def _hook(self, site: str):
        def replace(module, args, output):
            tensor = output[0] if isinstance(output, tuple) else output
            out = self._quantise(site, tensor)
            return (out, *output[1:]) if isinstance(output, tuple) else out

        return replace

    def _pre_hook(self, site: str):
        def replace(module, args):
            return (self._quantise(site, args[0]), *args[1:])

        return replace

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None):
        return self.hf_model(input_ids, labels=labels)

    def check_code(self, site: str, code: int) -> None:
        check_code(site, code, {s: self.bottleneck(s).total_codes for s in self.sites})

    @contextmanager
    def forcing(self, site: str, code: int, positions: slice, mode: str = "swap") -> Iterator[None]:
        """Inside the block, code `code` fires at `site` at `positions` (every sequence of the batch), in place of
        the weakest of the k codes (mode "swap"), or in all k slots (mode "only": the site then outputs nothing but
        that code, k times over with reduce="sum"). `slice(None)` forces it at every position of every forward pass,
        which is how generation is steered (with a KV cache each pass holds only the new tokens)."""
        self.check_code(site, code)
        if mode not in FORCING_MODES:
            raise CodebookError(f"Forcing mode must be one of {', '.join(FORCING_MODES)}, not '{mode}'.")
        entry = (code, positions, mode)
        self.forced.setdefault(site, []).append(entry)
        try:
            yield
        finally:
            self.forced[site].remove(entry)

    @torch.no_grad()
    def kmeans_init(self, input_ids: torch.Tensor, batch_size: int = 64) -> None:
        """Initialise every site's codes by k-means on what the plain model writes there on `input_ids`."""
        seen: dict[str, list[torch.Tensor]] = {site: [] for site in self.sites}
        self.enabled = False
        try:
            for start in range(0, len(input_ids), batch_size):
                self.hf_model(input_ids[start : start + batch_size])
                for site in self.sites:
                    seen[site].append(self.inputs[site].reshape(-1, self.inputs[site].shape[-1]))
        finally:
            self.enabled = True
        for site in self.sites:
            self.bottleneck(site).kmeans_init(torch.cat(seen[site]))


def code_purity(codes: np.ndarray, labels: np.ndarray) -> float:
    """Share of firings whose code's most common label is their own label (labels < 0 are skipped).

    1 means every code fires on one label only; a code that fires on everything scores the
    share of the most common label.
    """
    keep = labels >= 0
    codes, labels = codes[keep], labels[keep]
    total = 0
    for code in np.unique(codes):
        total += np.bincount(labels[codes == code]).max()
    return total / max(len(codes), 1)
