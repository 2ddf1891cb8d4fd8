"""`workbench train`: train a dictionary on a store's activations and register it in the catalog.

The training loop itself is dictionaries/fit.py; this module resolves the command's settings
(hooks, run, name, learning rate, dead-latent window), checks that a repeated command matches
the dictionary it resumes, and records the dictionary before and after training.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from workbench.activation_batches import ActivationBatches
from workbench.dictionaries.base import DictionaryConfig, make_dictionary
from workbench.dictionaries.fit import Checkpointer, fit
from workbench.dictionaries.saelens_format import saelens_metadata
from workbench.errors import DictionaryError
from workbench.provenance import git_commit, package_version
from workbench.store import Store, check_run_name, lookups, make_run_name, records
from workbench.store.records import DictionaryRecord


@dataclass
class TrainConfig:
    store: str
    """The store directory."""
    hook: str
    """The hook point to encode (canonical or legacy name); for a transcoder, its input."""
    arch: str = "topk"
    """Dictionary family: topk, batchtopk, matryoshka, mutualchoice, featurechoice, topafa, mp, or transcoder
    (shorthand for batchtopk with hook_out)."""
    k: int = 32
    """Active latents per token."""
    latents: int = 4608
    """Dictionary size."""
    tokens: int = 2_000_000
    """Training tokens, e.g. 2M or 500k; epochs repeat the stored tokens in a new order."""
    run: str | None = None
    """Harvest run to read (default: the only run with this hook)."""
    hook_out: str | None = None
    """Transcoders: the hook to predict, e.g. blocks.6.mlp.hook_out."""
    skip_connection: bool = False
    """Transcoders: add a learned linear skip term."""
    name: str | None = None
    """Dictionary name; repeat it to resume (default: derived from arch, hook, k, latents)."""
    batch_size: int = 4096
    """Tokens per training batch."""
    lr: float | None = None
    """Adam learning rate (default: 2e-4 / sqrt(latents / 16384), the scaling of Gao et al.)."""
    seed: int = 0
    """Seed of the initialisation and of the batch order."""
    dead_window_tokens: int | None = None
    """Tokens a latent may stay silent before it counts as dead (default: min(10M, a quarter of the training
    tokens))."""
    checkpoint_seconds: float = 60.0
    """Seconds between checkpoints; a killed run resumes from its last one."""

    def __post_init__(self) -> None:
        if self.arch == "transcoder":
            if not self.hook_out:
                raise DictionaryError(
                    "--arch transcoder needs --out, the hook it predicts (e.g. blocks.6.mlp.hook_out)."
                )
            # Stored (and compared on resume) as the family it stands for.
            self.arch = "batchtopk"


@dataclass
class TrainResult:
    dictionary: DictionaryRecord
    """The dictionary's catalog record, complete (its train_fvu, train_l0 and dead_fraction filled in)."""
    resumed: bool
    """Whether a dictionary of this name already existed (a resumed run, or one that was already complete)."""


def run_train(config: TrainConfig, *, progress: bool = True) -> TrainResult:
    """Train a dictionary on a store's activations and register it. Re-running the same config resumes."""
    store = Store.open_existing(config.store)
    hook = lookups.canonical_hook(store, config.hook)
    hook_out = lookups.canonical_hook(store, config.hook_out) if config.hook_out else None
    run = lookups.run_with_hook(store, hook, config.run)
    data = ActivationBatches(store, run, hook, config.batch_size, config.seed, hook_out=hook_out)
    dictionary_config = DictionaryConfig(
        arch=config.arch,
        d_in=data.d_model,
        n_latents=config.latents,
        k=config.k,
        transcoder=hook_out is not None,
        skip_connection=config.skip_connection,
    )
    kind = f"{config.arch}-transcoder" if hook_out else config.arch
    name = check_run_name(config.name or make_run_name(kind, hook, f"k{config.k}", str(config.latents)))
    n_steps = config.tokens // config.batch_size
    if n_steps < 1:
        raise DictionaryError(
            f"--tokens ({config.tokens}) must be at least one batch (--batch-size {config.batch_size})."
        )
    lr = config.lr or 2e-4 / (config.latents / 16384) ** 0.5
    dead_window = config.dead_window_tokens or min(10_000_000, max(config.tokens // 4, config.batch_size))
    folder = store.root / "dictionaries" / name
    settings = asdict(config) | {
        "run": run,
        "hook": hook,
        "hook_out": hook_out,
        "lr": lr,
        "dead_window_tokens": dead_window,
    }
    settings.pop("store")

    existing = lookups.dictionary(store, name)
    if existing:
        assert existing.config is not None  # train and import write every dictionary record with its settings
        differing = [k for k in settings if k != "checkpoint_seconds" and existing.config.get(k) != settings[k]]
        if differing:
            raise DictionaryError(
                f"Dictionary '{name}' exists with different settings ({', '.join(differing)}); "
                "choose a new --name, or repeat the original arguments to resume it."
            )
        if existing.status == "complete":
            return TrainResult(existing, resumed=True)
    else:
        with store.transaction() as con:
            records.insert(
                con,
                DictionaryRecord(
                    name=name,
                    arch=config.arch,
                    run=run,
                    hook=hook,
                    hook_out=hook_out,
                    d_in=data.d_model,
                    d_out=dictionary_config.output_width,
                    n_latents=config.latents,
                    k=config.k,
                    path=folder.relative_to(store.root).as_posix(),
                    dead_window_tokens=dead_window,
                    config=settings,
                    package_version=package_version(),
                    git_commit=git_commit(),
                ),
            )

    torch.manual_seed(config.seed)
    model = make_dictionary(dictionary_config)
    state, tracker = fit(
        model,
        data.iterate,
        n_steps,
        lr,
        dead_window,
        Checkpointer(folder),
        config.checkpoint_seconds,
        progress=progress,
    )
    model.fold_scales(state.input_scale, state.target_scale)  # the saved dictionary works on raw activations
    model.save(folder, saelens_metadata(lookups.run(store, run).model, run, hook, hook_out))
    with store.transaction() as con:
        records.update(
            con,
            DictionaryRecord,
            {"name": name},
            status="complete",
            steps_done=state.step,
            tokens_done=state.tokens,
            train_fvu=state.last_fvu,
            train_l0=state.last_l0,
            dead_fraction=tracker.dead_fraction(),
        )
    return TrainResult(lookups.completed_dictionary(store, name), resumed=existing is not None)
