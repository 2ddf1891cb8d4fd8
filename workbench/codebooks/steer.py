"""Steering: generate with chosen codes forced on, and measure how often the target behaviour appears.

Both arms sample with the same seed, so the only difference between a baseline generation and
its steered twin is the forced codes. The behaviour counted is "the continuation contains one of
the target strings" (case-insensitive); by default the targets are the tokens the code fires on
most in the store, which is how the paper's topic-steering experiments score generations.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass

import torch

from workbench.codebooks.attach import CodebookModel
from workbench.dictionaries.codebook import CodebookError


@dataclass
class SteeringResult:
    forced: dict[str, int]
    targets: list[str]
    baseline: list[str]  # continuations without forcing
    steered: list[str]

    @staticmethod
    def _rate(texts: list[str], targets: list[str]) -> float:
        wanted = [t.strip().lower() for t in targets if t.strip()]
        return sum(any(t in text.lower() for t in wanted) for text in texts) / max(len(texts), 1)

    @property
    def baseline_rate(self) -> float:
        return self._rate(self.baseline, self.targets)

    @property
    def steered_rate(self) -> float:
        return self._rate(self.steered, self.targets)


@torch.no_grad()
def generate(coded: CodebookModel, tokenizer, prompt: str, n_samples: int = 8, max_new_tokens: int = 24, seed: int = 0,
             forced: dict[str, int] | None = None, temperature: float = 1.0, mode: str = "swap") -> list[str]:
    """Sampled continuations of [BOS] + prompt, with `forced` {site: code} on at every position."""
    if n_samples < 1 or max_new_tokens < 1:
        raise CodebookError("--samples and --max-new-tokens must be positive.")
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    ids = torch.tensor([bos + tokenizer(prompt, add_special_tokens=False)["input_ids"]])
    if ids.shape[1] == 0:
        raise CodebookError("The prompt is empty and the tokenizer has no BOS token to start from; give a prompt.")
    coded.eval()
    with ExitStack() as stack:
        for site, code in (forced or {}).items():
            stack.enter_context(coded.forcing(site, code, slice(None), mode))
        torch.manual_seed(seed)
        out = coded.hf_model.generate(ids.repeat(n_samples, 1), attention_mask=torch.ones_like(ids).repeat(n_samples, 1),
                                      do_sample=True, temperature=temperature, top_k=0, top_p=1.0,
                                      max_new_tokens=max_new_tokens,
                                      pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
    return [tokenizer.decode(row[ids.shape[1]:], skip_special_tokens=True) for row in out]


def steer(coded: CodebookModel, tokenizer, prompt: str, forced: dict[str, int], targets: list[str], n_samples: int = 8,
          max_new_tokens: int = 24, seed: int = 0, mode: str = "swap") -> SteeringResult:
    if not forced:
        raise CodebookError("Name at least one code to force (--site and --code).")
    for site, code in forced.items():  # before any generation
        coded.check_code(site, code)
    baseline = generate(coded, tokenizer, prompt, n_samples, max_new_tokens, seed)
    steered = generate(coded, tokenizer, prompt, n_samples, max_new_tokens, seed, forced, mode=mode)
    return SteeringResult(forced, targets, baseline, steered)
