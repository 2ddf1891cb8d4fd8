"""Evaluate a dictionary: FVU, L0 and dead latents on stored activations, and the CE-loss score
and KL with its reconstruction spliced into the real model through a backend.

    CE-loss score = (CE_zero_ablation - CE_spliced) / (CE_zero_ablation - CE_clean)

as SAELens and dictionary_learning define it; the raw delta CE (nats) and KL(clean || spliced)
per token are reported too. The BOS position keeps its original activation in the spliced
and ablated passes: dictionaries are not trained on it, and its huge norm would dominate.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from workbench.corpus import is_bos_position
from workbench.devices import explain_out_of_memory, resolve_placement
from workbench.dictionaries import load_dictionary
from workbench.errors import DictionaryError
from workbench.hooks import parse_hook
from workbench.metrics import FVUAccumulator
from workbench.models import load_hf_model, make_backend, resolve_model_dir
from workbench.models.backends import Patch
from workbench.store import Store, lookups
from workbench.store.records import DictionaryEvalRecord, RunRecord, delete, insert, read_one


def _keep_bos(fn):
    def patched(t: torch.Tensor) -> torch.Tensor:
        return torch.cat([t[:, :1], fn(t[:, 1:])], dim=1)

    return patched


def next_token_ce(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Per-token cross-entropy of predicting ids[:, 1:] from positions :-1."""
    log_probs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    return -log_probs.gather(-1, ids[:, 1:, None]).squeeze(-1)


@dataclass
class EvalConfig:
    store: str
    """The store directory."""
    dictionary: str
    """Dictionary name (see the dictionaries table)."""
    run: str | None = None
    """Run to evaluate on (default: the training run; harvest a separate run for held-out numbers)."""
    ce_tokens: int = 4096
    """Tokens for the spliced CE and KL."""
    backend: str = "nnsight"
    """Hooking library that splices the reconstruction into the model."""
    batch_size: int = 8
    """Contexts per forward pass of the spliced CE."""
    device: str = "auto"
    """Where it runs: auto (cuda when available, else cpu), cpu, cuda, cuda:N or mps."""
    dtype: str = "auto"
    """The model's compute precision: auto (bfloat16 on cuda, float32 elsewhere), float32, bfloat16 or float16.
    The dictionary runs in fp32; FVU, CE and KL accumulate in fp32 or fp64."""


@dataclass
class EvalResult:
    evaluation: DictionaryEvalRecord
    """The metrics, as written to the dictionary_evals table."""


def run_eval(config: EvalConfig) -> EvalResult:
    """Measure a dictionary on stored activations and spliced into the model; replaces its row for the run."""
    placement = resolve_placement(config.device, config.dtype)
    store = Store.open_existing(config.store)
    name, backend_name, ce_tokens, batch_size = config.dictionary, config.backend, config.ce_tokens, config.batch_size
    record = lookups.completed_dictionary(store, name)
    hook, hook_out = record.hook, record.hook_out
    run = config.run or record.run
    with store.reader() as con:
        found = read_one(con, RunRecord, run=run)
    if found is None:
        raise DictionaryError(f"No run '{run}' to evaluate on.")
    model_name, context_len, n_layers = found.model, found.context_len, found.n_layers
    sae = load_dictionary(store.root / record.path).eval().to(placement.device)
    width = lookups.hook_widths(store, run).get(hook)
    if sae.config.d_in != width:
        raise DictionaryError(
            f"Dictionary '{name}' reads {sae.config.d_in}-dimensional activations, but run '{run}' holds "
            + (f"{width} values per token at {hook}" if width else f"no activations at {hook}")
            + "; evaluate it on a run of the model it was trained on."
        )

    # 1. Reconstruction metrics on stored activations.
    fvu, l0_sum, n_tokens = FVUAccumulator(), 0.0, 0
    fired = torch.zeros(sae.config.n_latents, dtype=torch.bool, device=placement.device)
    inputs = store.iter_activations(run, hook)
    targets = store.iter_activations(run, hook_out) if hook_out else None
    with torch.no_grad():
        for token_ids, x in inputs:
            y = next(targets)[1] if targets is not None else x
            keep = ~is_bos_position(token_ids, context_len)
            x_t, y_t = (torch.from_numpy(a[keep]).to(placement.device) for a in (x, y))
            f = sae.encode(x_t)
            fvu.add(y_t, sae.decode(f, x_t))
            l0_sum += (f != 0).sum().item()
            fired |= (f != 0).any(0)
            n_tokens += len(x_t)

    # 2. Splice into the model: clean, spliced and zero-ablated passes on the same contexts.
    hf_model, tokenizer = load_hf_model(resolve_model_dir(model_name, store.root / "models"), placement)
    backend = make_backend(backend_name, hf_model, tokenizer)
    contexts = torch.from_numpy(store.contexts(run, max(1, -(-ce_tokens // context_len))))
    target = parse_hook(hook_out or hook, n_layers)
    source = parse_hook(hook, n_layers) if hook_out else None
    # A transcoder reads its input hook and replaces the output hook; an SAE replaces its own hook.
    spliced_patch = Patch(target, _keep_bos(lambda t: sae.reconstruct(t.float()).to(t.dtype)), source=source)
    zero_patch = Patch(target, _keep_bos(torch.zeros_like))
    ce: dict[str, list[torch.Tensor]] = {"clean": [], "spliced": [], "zero": []}
    kls = []
    with torch.no_grad():
        for start in range(0, len(contexts), batch_size):
            batch = contexts[start : start + batch_size].to(placement.device)
            with explain_out_of_memory("The spliced CE", batch_size, placement.device):
                clean = backend.run(batch, [], logits=True).logits
                spliced = backend.run(batch, [], logits=True, patch=spliced_patch).logits
                zero = backend.run(batch, [], logits=True, patch=zero_patch).logits
            assert clean is not None and spliced is not None and zero is not None  # asked for
            for key, logits in (("clean", clean), ("spliced", spliced), ("zero", zero)):
                ce[key].append(next_token_ce(logits, batch))
            clean_lp = torch.log_softmax(clean[:, 1:].float(), -1)
            kls.append(
                (clean_lp.exp() * (clean_lp - torch.log_softmax(spliced[:, 1:].float(), -1))).sum(-1).clamp_min(0)
            )
    ce_clean, ce_spliced, ce_zero = (torch.cat(ce[k]).mean().item() for k in ("clean", "spliced", "zero"))
    evaluation = DictionaryEvalRecord(
        dictionary=name,
        eval_run=run,
        backend=backend_name,
        n_tokens=n_tokens,
        fvu=fvu.value(),
        l0=l0_sum / max(n_tokens, 1),
        dead_fraction=1 - fired.float().mean().item(),
        n_ce_tokens=int(torch.cat(ce["clean"]).numel()),
        ce_clean=ce_clean,
        ce_spliced=ce_spliced,
        ce_zero_ablation=ce_zero,
        ce_loss_score=(ce_zero - ce_spliced) / (ce_zero - ce_clean) if ce_zero != ce_clean else float("nan"),
        delta_ce=ce_spliced - ce_clean,
        kl=torch.cat(kls).mean().item(),
        device=placement.device_name,
        dtype=placement.dtype_name,
    )
    with store.transaction() as con:
        delete(con, DictionaryEvalRecord, dictionary=name, eval_run=run)
        insert(con, evaluation)
    return EvalResult(evaluation)
