"""Steering: generate with chosen codes forced on, and measure how often the target behaviour appears.

Both arms sample with the same seed, so the only difference between a baseline generation and
its steered twin is the forced codes. The behaviour counted is "the continuation contains one of
the target strings" (case-insensitive); by default the targets are the tokens the code fires on
most in the store, which is how the paper's topic-steering experiments score generations.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, field

import torch

from workbench.codebooks.attach import CodebookModel
from workbench.devices import resolve_placement
from workbench.dictionaries.codebook import CodebookError


@dataclass
class SteerResult:
    """Baseline and steered continuations of one prompt, and how often each shows a target."""

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
def generate(
    coded: CodebookModel,
    tokenizer,
    prompt: str,
    n_samples: int = 8,
    max_new_tokens: int = 24,
    seed: int = 0,
    forced: dict[str, int] | None = None,
    temperature: float = 1.0,
    mode: str = "swap",
) -> list[str]:
    """Sampled continuations of [BOS] + prompt, with `forced` {site: code} on at every position."""
    if n_samples < 1 or max_new_tokens < 1:
        raise CodebookError("--samples and --max-new-tokens must be positive.")
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    ids = torch.tensor([bos + tokenizer(prompt, add_special_tokens=False)["input_ids"]], device=coded.hf_model.device)
    if ids.shape[1] == 0:
        raise CodebookError("The prompt is empty and the tokenizer has no BOS token to start from; give a prompt.")
    coded.eval()
    with ExitStack() as stack:
        for site, code in (forced or {}).items():
            stack.enter_context(coded.forcing(site, code, slice(None), mode))
        torch.manual_seed(seed)
        out = coded.hf_model.generate(
            ids.repeat(n_samples, 1),
            attention_mask=torch.ones_like(ids).repeat(n_samples, 1),
            do_sample=True,
            temperature=temperature,
            top_k=0,
            top_p=1.0,
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
        )
    return [tokenizer.decode(row[ids.shape[1] :], skip_special_tokens=True) for row in out]


def steer(
    coded: CodebookModel,
    tokenizer,
    prompt: str,
    forced: dict[str, int],
    targets: list[str],
    n_samples: int = 8,
    max_new_tokens: int = 24,
    seed: int = 0,
    mode: str = "swap",
) -> SteerResult:
    if not forced:
        raise CodebookError("Name at least one code to force (--site and --code).")
    for site, code in forced.items():  # before any generation
        coded.check_code(site, code)
    baseline = generate(coded, tokenizer, prompt, n_samples, max_new_tokens, seed)
    steered = generate(coded, tokenizer, prompt, n_samples, max_new_tokens, seed, forced, mode=mode)
    return SteerResult(forced, targets, baseline, steered)


@dataclass
class SteerConfig:
    store: str
    """The store directory."""
    codebook: str
    """Codebooks name (see the codebooks table)."""
    site: str
    """The site whose code is forced, e.g. blocks.3.mlp.hook_out."""
    code: int
    """The code forced on at every position."""
    prompt: str
    """The prompt continued."""
    targets: list[str] = field(default_factory=list)
    """Strings that count as the behaviour (default: the code's top tokens, from `workbench codebook encode`)."""
    mode: str = "swap"
    """swap: the code replaces the weakest of the k codes; only: it fills all k slots, so the site outputs nothing
    else (a stronger push)."""
    samples: int = 16
    """Continuations per arm (baseline and steered, same seeds)."""
    max_new_tokens: int = 24
    """Tokens generated per continuation."""
    seed: int = 0
    """Sampling seed, shared by both arms."""
    device: str = "auto"
    """Where it runs: auto (cuda when available, else cpu), cpu, cuda, cuda:N or mps."""
    dtype: str = "auto"
    """Compute precision (autocast; the model's weights stay fp32): auto (bfloat16 on cuda, float32 elsewhere),
    float32, bfloat16 or float16."""


def run_codebook_steer(config: SteerConfig) -> SteerResult:
    """Generate with the code forced on and without; targets default to the code's commonest stored tokens."""
    from workbench.codebooks.browse import default_targets
    from workbench.codebooks.train import open_codebook_model
    from workbench.store import Store

    placement = resolve_placement(config.device, config.dtype)
    store = Store.open_existing(config.store)
    coded, tokenizer, _ = open_codebook_model(store, config.codebook, placement.device)
    coded.check_code(config.site, config.code)
    targets = config.targets or default_targets(store, config.codebook, config.site, config.code)
    if not targets:
        raise CodebookError(
            f"Code {config.code} at {config.site} has no stored firings to take targets from: run "
            "`workbench codebook encode` first, or give --targets."
        )
    with placement.autocast():
        return steer(
            coded,
            tokenizer,
            config.prompt,
            {config.site: config.code},
            targets,
            config.samples,
            config.max_new_tokens,
            config.seed,
            mode=config.mode,
        )
