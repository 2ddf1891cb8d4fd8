"""`workbench train`: train dictionaries on a store's activations and register them in the catalog.

The training loop itself is dictionaries/fit.py; this module resolves the command's settings
(hooks, run, names, learning rates, dead-latent window, device), checks that a repeated command
matches the dictionaries it resumes, and records each dictionary before and after training.

Several hooks (`--hook a,b`) and sweeps (`--k 16,32 --latents 4608,9216`) make a group: one
dictionary per combination, all trained from one read of the data (fit_group). Each keeps its
own name, catalog row, checkpoint and exact resume, and equals the same dictionary trained alone.

Under torchrun (`torchrun --nproc-per-node N -m workbench train ...`) the processes train data parallel:
each reads its slice of every global batch (--batch-size is the global batch), and the result equals
one process's to float tolerance. With --distribute-dictionaries each process trains its own share of
the group instead. Either way rank 0 alone writes the catalog (workbench/distributed.py).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from workbench import distributed
from workbench.activation_batches import ActivationBatches
from workbench.devices import Placement, explain_out_of_memory, resolve_placement
from workbench.dictionaries.base import DictionaryConfig, make_dictionary
from workbench.dictionaries.fit import Checkpointer, Member, fit_group
from workbench.dictionaries.saelens_format import saelens_metadata
from workbench.distributed import SINGLE, DistributedError, Ranks
from workbench.errors import DictionaryError
from workbench.hooks import parse_hook
from workbench.provenance import git_commit, package_version
from workbench.store import Store, check_run_name, lookups, make_run_name, records
from workbench.store.records import DictionaryRecord


@dataclass
class TrainConfig:
    store: str
    """The store directory."""
    hook: list[str] = dataclasses.field(default_factory=list)
    """Hook points to encode (canonical or legacy names); for transcoders, their inputs. Several, e.g.
    blocks.2.hook_out,blocks.6.hook_out, train one dictionary each from one read of the data."""
    arch: str = "topk"
    """Dictionary family: topk, batchtopk, matryoshka, mutualchoice, featurechoice, topafa, mp, transcoder
    (shorthand for batchtopk with hook_out), or clt (a cross-layer transcoder over --layers)."""
    layers: str | None = None
    """--arch clt: the consecutive model layers it covers, e.g. 0-29. Layer l's features read blocks.l.mlp.hook_in
    and write to every later covered layer's mlp.hook_out; --k and --latents are per layer."""
    k: list[int] = dataclasses.field(default_factory=lambda: [32])
    """Active latents per token; several (16,32,64) sweep them, one dictionary each."""
    latents: list[int] = dataclasses.field(default_factory=lambda: [4608])
    """Dictionary size; several (4608,9216) sweep them."""
    tokens: int = 2_000_000
    """Training tokens, e.g. 2M or 500k; epochs repeat the stored tokens in a new order."""
    run: str | None = None
    """Harvest run to read (default: the only run with this hook)."""
    hook_out: list[str] | None = None
    """Transcoders: the hook to predict, e.g. blocks.6.mlp.hook_out; one per --hook, in the same order."""
    skip_connection: bool = False
    """Transcoders: add a learned linear skip term."""
    name: str | None = None
    """Dictionary name; repeat it to resume (default: derived from arch, hook, k, latents). With several
    dictionaries it is the prefix of their derived names."""
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
    device: str = "auto"
    """Where the dictionaries train: auto (cuda when available, else cpu), cpu, cuda, cuda:N or mps."""
    dtype: str = "auto"
    """Precision of the model (streaming) and of the dictionaries' matrix products (autocast; their weights, Adam
    and the loss stay fp32): auto (bfloat16 on cuda, float32 elsewhere), float32, bfloat16 or float16."""
    model: str | None = None
    """Streaming: train on live activations of this model (registry name, HF folder or hub id) instead of a
    store's shards; nothing is stored but the dictionaries and the corpus slice's tokens."""
    corpus: str = "default"
    """Streaming: the corpus, as for harvest."""
    stream_tokens: int | None = None
    """Streaming: tokens of the corpus slice, repeated in a new order each epoch (default: --tokens, capped by
    the corpus)."""
    context_len: int = 128
    """Streaming: tokens per context, including the BOS; a batch is whole contexts (at most --batch-size rows)."""
    backend: str = "nnsight"
    """Streaming: the hooking library."""
    text_column: str = "text"
    """Streaming: text field for .jsonl/.parquet/hf corpora."""
    distribute_dictionaries: bool = False
    """Under torchrun with several dictionaries: each process trains its own share of them (dictionary i on
    rank i mod N) instead of all of them data parallel. No effect in one process."""

    def __post_init__(self) -> None:
        # Python callers may give one hook, k or width as a plain value (or comma-separated hooks).
        self.hook = _as_list(self.hook)
        self.hook_out = _as_list(self.hook_out) if self.hook_out else None
        self.k, self.latents = [int(k) for k in _as_list(self.k)], [int(n) for n in _as_list(self.latents)]
        if self.arch == "clt":
            if not self.layers:
                raise DictionaryError("--arch clt needs --layers, the model layers it covers (e.g. --layers 0-29).")
            covered = parse_layer_range(self.layers)
            hooks = [f"blocks.{layer}.mlp.hook_in" for layer in covered]
            outs = [f"blocks.{layer}.mlp.hook_out" for layer in covered]
            if (self.hook and self.hook != hooks) or (self.hook_out and self.hook_out != outs):
                raise DictionaryError(
                    "--arch clt reads blocks.L.mlp.hook_in and predicts blocks.L.mlp.hook_out for each of --layers "
                    "itself; leave out --hook and --out."
                )
            self.hook, self.hook_out = hooks, outs
        elif self.layers:
            raise DictionaryError("--layers is for cross-layer transcoders (--arch clt); give --hook for the others.")
        if self.arch == "transcoder":
            if not self.hook_out:
                raise DictionaryError(
                    "--arch transcoder needs --out, the hook it predicts (e.g. blocks.6.mlp.hook_out)."
                )
            # Stored (and compared on resume) as the family it stands for.
            self.arch = "batchtopk"
        if self.hook_out and len(self.hook_out) != len(self.hook):
            raise DictionaryError(
                f"--out gives {len(self.hook_out)} hook(s) for {len(self.hook)} --hook(s); give one output per input."
            )
        if self.model and self.stream_tokens is None:
            self.stream_tokens = self.tokens
        if not self.hook or not self.k or not self.latents:
            raise DictionaryError("--hook, --k and --latents need at least one value each.")


def parse_layer_range(text: str) -> list[int]:
    """ "0-29" -> [0, ..., 29]; "4" -> [4]; "2,3,4" -> [2, 3, 4] (consecutive layers only)."""
    try:
        if "-" in text:
            first, last = (int(part) for part in text.split("-", 1))
            layers = list(range(first, last + 1))
        else:
            layers = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise DictionaryError(f"--layers {text!r}: give a range of layers such as 0-29.") from None
    if not layers or layers != list(range(layers[0], layers[0] + len(layers))) or layers[0] < 0:
        raise DictionaryError(f"--layers {text!r}: give consecutive layers, first to last, such as 0-29.")
    return layers


def _as_list(value) -> list:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return list(value) if isinstance(value, (list, tuple)) else [value]


@dataclass
class TrainResult:
    dictionaries: list[DictionaryRecord]
    """The dictionaries' catalog records, complete (train_fvu, train_l0 and dead_fraction filled in), in the
    order hook x k x latents."""
    resumed: bool
    """Whether any of them already existed (a resumed run, or one that was already complete)."""
    data_wait_share: float | None = None
    """Share of the training loop's wall time spent waiting for batches (None when nothing was trained)."""

    @property
    def dictionary(self) -> DictionaryRecord:
        """The dictionary of a single-dictionary run."""
        if len(self.dictionaries) != 1:
            raise DictionaryError(f"This run trained {len(self.dictionaries)} dictionaries; read .dictionaries.")
        return self.dictionaries[0]


@dataclass
class _Planned:
    """One dictionary of the command: its settings, resolved, and its catalog record if it exists."""

    name: str
    hook: str
    hook_out: str | None
    lr: float
    settings: dict
    dictionary_config: DictionaryConfig  # k and the width are here
    existing: DictionaryRecord | None
    inputs: list[str] = dataclasses.field(default_factory=list)  # hooks read (a CLT: every covered layer's)
    targets: list[str] = dataclasses.field(default_factory=list)

    @property
    def input_key(self) -> str:
        """The batch key of its input: the hook, or for a CLT the covered layers' inputs side by side."""
        return self.inputs[0] if len(self.inputs) == 1 else "clt-input:" + ",".join(self.inputs)

    @property
    def target_key(self) -> str:
        return self.targets[0] if len(self.targets) == 1 else "clt-target:" + ",".join(self.targets)

    def folder(self, store: Store) -> Path:
        return store.root / "dictionaries" / self.name


def run_train(config: TrainConfig, *, progress: bool = True) -> TrainResult:
    """Train dictionaries on a store's activations and register them. Re-running the same config resumes."""
    placement = resolve_placement(config.device, config.dtype)
    ranks = distributed.ranks_from_environment()
    if ranks.world_size == 1:
        return _train(config, placement, SINGLE, progress)
    if config.model:
        raise DistributedError(
            "Streaming training (--model) runs in one process. Harvest the activations first, then train on "
            "them with torchrun."
        )
    placement = Placement(distributed.rank_device(ranks, placement.device), placement.dtype)
    distributed.start(ranks, placement.device)
    distributed.check_same_arguments(ranks, asdict(config))
    return _train(config, placement, ranks, progress and ranks.is_main)


def _train(config: TrainConfig, placement: Placement, ranks: Ranks, progress: bool) -> TrainResult:
    n_steps = config.tokens // config.batch_size
    if n_steps < 1:
        raise DictionaryError(
            f"--tokens ({config.tokens}) must be at least one batch (--batch-size {config.batch_size})."
        )
    live = None
    if config.model:  # streaming: live activations, nothing stored
        from workbench.streaming import open_stream

        store = Store.create_or_open(config.store)
        run, widths, live = open_stream(store, config, placement)
        # The names the live batches carry, in the order given: live.hooks is in forward order, which interleaves
        # several transcoders' inputs and outputs (blocks.0 in, blocks.0 out, blocks.1 in, ...).
        canonical = {hook: parse_hook(hook, 10**6).name for hook in config.hook + (config.hook_out or [])}
        hooks = [canonical[hook] for hook in config.hook]
        hooks_out = [canonical[hook] for hook in config.hook_out] if config.hook_out else None
        n_steps, model_name = config.tokens // live.rows_per_step, config.model
    else:
        store = Store.open_existing(config.store)
        hooks = [lookups.canonical_hook(store, hook) for hook in config.hook]
        hooks_out = [lookups.canonical_hook(store, hook) for hook in config.hook_out] if config.hook_out else None
        runs = {lookups.run_with_hook(store, hook, config.run) for hook in hooks}
        if len(runs) > 1:
            raise DictionaryError(f"The hooks are in different runs ({', '.join(sorted(runs))}); give --run.")
        run = runs.pop()
        run_record = lookups.run(store, run)
        widths, model_name = lookups.hook_widths(store, run), run_record.model
        ActivationBatches(store, run, hooks + (hooks_out or []), config.batch_size)  # refuses what it cannot batch
    dead_window = config.dead_window_tokens or min(10_000_000, max(config.tokens // 4, config.batch_size))
    plan = _plan(store, config, run, hooks, hooks_out, widths, dead_window)
    distributed.barrier(ranks)  # every rank has read the catalog before rank 0 adds to it
    if ranks.is_main:
        with store.transaction() as con:  # register the new ones together, after every check passed
            for item in plan:
                if item.existing is None:
                    records.insert(con, _new_record(store, item, config.arch, run, dead_window, placement))
    distributed.barrier(ranks)

    unfinished = [item for item in plan if item.existing is None or item.existing.status != "complete"]
    split = config.distribute_dictionaries and ranks.world_size > 1
    mine = unfinished[ranks.rank :: ranks.world_size] if split else unfinished
    data_parallel = SINGLE if split else ranks
    members = []
    for item in mine:
        torch.manual_seed(config.seed)  # each dictionary starts as it would alone
        members.append(
            Member(
                make_dictionary(item.dictionary_config).to(placement.device),
                n_steps,
                item.lr,
                dead_window,
                input_key=item.input_key,
                target_key=item.target_key,
                checkpointer=Checkpointer(item.folder(store)),
                label=item.name,
            )
        )
    timing = None
    if members:
        batches_from: Callable[[int], Iterator[dict[str, torch.Tensor]]]
        if live is not None:
            batches_from = live.iterate
        else:  # only the hooks this process trains on; a hook's batches are the same read alone or with others
            read = list(dict.fromkeys(hook for item in mine for hook in item.inputs + item.targets))
            batches_from = ActivationBatches(
                store,
                run,
                read,
                config.batch_size,
                config.seed,
                pin_memory=placement.device.type == "cuda",
                rank=data_parallel.rank,
                world_size=data_parallel.world_size,
            ).iterate
        if any(len(item.inputs) > 1 for item in mine):
            batches_from = _with_concatenations(batches_from, mine)
        with explain_out_of_memory(
            f"Training {len(members)} dictionaries", config.batch_size, placement.device, " Or train fewer at once."
        ):
            timing = fit_group(
                members,
                batches_from,
                config.checkpoint_seconds,
                progress=progress,
                autocast_dtype=placement.dtype,
                data_parallel=data_parallel,
            )
    finished = {}
    for item, member in zip(mine, members):
        assert member.tracker is not None  # set by fit_group
        if split or ranks.is_main:  # data parallel, every rank holds the same dictionary: rank 0 saves it
            member.model.fold_scales(member.state.input_scale, member.state.target_scale)  # for raw activations
            member.model.to("cpu").save(item.folder(store), saelens_metadata(model_name, run, item.hook, item.hook_out))
        finished[item.name] = {
            "status": "complete",
            "steps_done": member.state.step,
            "tokens_done": member.state.tokens,
            "train_fvu": member.state.last_fvu,
            "train_l0": member.state.last_l0,
            "dead_fraction": member.tracker.dead_fraction(),
        }
    if split:  # rank 0 records what every rank trained
        finished = {
            name: values for part in distributed.gather_objects(ranks, finished) for name, values in part.items()
        }
    if ranks.is_main:
        for name, values in finished.items():
            with store.transaction() as con:
                records.update(con, DictionaryRecord, {"name": name}, **values)
    distributed.barrier(ranks)
    return TrainResult(
        [lookups.completed_dictionary(store, item.name) for item in plan],
        resumed=any(item.existing is not None for item in plan),
        data_wait_share=timing.data_wait_share if timing else None,
    )


def _with_concatenations(
    batches_from: Callable[[int], Iterator[dict[str, torch.Tensor]]], plan: list[_Planned]
) -> Callable[[int], Iterator[dict[str, torch.Tensor]]]:
    """Batches that also carry each CLT's inputs and targets side by side, [batch, layers x d]."""
    groups = {item.input_key: item.inputs for item in plan} | {item.target_key: item.targets for item in plan}
    groups = {key: hooks for key, hooks in groups.items() if len(hooks) > 1}

    def iterate(step: int) -> Iterator[dict[str, torch.Tensor]]:
        for batch in batches_from(step):
            yield batch | {key: torch.cat([batch[hook] for hook in hooks], 1) for key, hooks in groups.items()}

    return iterate


def _plan(
    store, config: TrainConfig, run, hooks, hooks_out, widths: dict[str, int], dead_window: int
) -> list[_Planned]:
    """One entry per hook x k x latents, named and checked against the catalog before anything is written.
    `widths`: values per token at each hook (d_model, or n_heads x d_head at attn.hook_z)."""
    pairs = list(zip(hooks, hooks_out or [None] * len(hooks)))
    if config.arch == "clt":  # one dictionary over every layer: named by its first input and last output
        pairs = [(hooks[0], hooks_out[-1])]
    combinations = list(itertools.product(pairs, config.k, config.latents))
    plan, problems = [], []
    for (hook, hook_out), k, latents in combinations:
        kind = f"{config.arch}-transcoder" if hook_out and config.arch != "clt" else config.arch
        where = f"layers{config.layers}" if config.arch == "clt" else hook
        if len(combinations) == 1:
            name = config.name or make_run_name(kind, where, f"k{k}", str(latents))
        else:
            name = make_run_name(*([config.name] if config.name else []), kind, where, f"k{k}", str(latents))
        check_run_name(name)
        lr = config.lr or 2e-4 / (latents / 16384) ** 0.5
        settings = asdict(config) | {
            "run": run,
            "hook": hook,
            "hook_out": hook_out,
            "k": k,
            "latents": latents,
            "lr": lr,
            "dead_window_tokens": dead_window,
        }
        for key in ("store", "device", "dtype", "distribute_dictionaries"):  # where it runs may change on resume
            settings.pop(key)
        existing = lookups.dictionary(store, name)
        if existing:
            assert existing.config is not None  # train and import write every dictionary record with its settings
            stored = _comparable(existing.config)
            differing = [key for key in settings if key != "checkpoint_seconds" and stored.get(key) != settings[key]]
            if differing:
                problems.append(f"'{name}' exists with different settings ({', '.join(differing)})")
        if config.arch == "clt":
            from workbench.dictionaries.clt import clt_config

            if config.skip_connection:
                raise DictionaryError("Cross-layer transcoders have no skip connection; leave out --skip-connection.")
            dictionary_config = clt_config(parse_layer_range(config.layers or ""), widths[hook], latents, k)
            inputs, targets = list(hooks), list(hooks_out)
        else:
            dictionary_config = DictionaryConfig(
                arch=config.arch,
                d_in=widths[hook],
                d_out=widths[hook_out] if hook_out else None,
                n_latents=latents,
                k=k,
                transcoder=hook_out is not None,
                skip_connection=config.skip_connection,
            )
            inputs, targets = [hook], [hook_out or hook]
        plan.append(_Planned(name, hook, hook_out, lr, settings, dictionary_config, existing, inputs, targets))
    names = [item.name for item in plan]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        problems.append(f"the sweep gives several dictionaries the name {', '.join(repeated)}")
    if problems:
        raise DictionaryError(
            "Nothing was trained: "
            + "; ".join(problems)
            + ". Choose a new --name (prefix), or repeat the original arguments to resume."
        )
    return plan


def _comparable(stored: dict) -> dict:
    """A dictionary's stored settings in today's form: before grouped training, hooks, k and widths were single
    values and the settings held the device."""
    stored = dict(stored)
    for key in ("hook", "hook_out", "k", "latents"):
        value = stored.get(key)
        if isinstance(value, list) and len(value) == 1:
            stored[key] = value[0]
    return stored


def _new_record(store, item: _Planned, arch: str, run: str, dead_window: int, placement):
    return DictionaryRecord(
        name=item.name,
        arch=arch,
        run=run,
        hook=item.hook,
        hook_out=item.hook_out,
        d_in=item.dictionary_config.d_in,
        d_out=item.dictionary_config.output_width,
        n_latents=item.dictionary_config.n_latents,
        k=item.dictionary_config.k,
        path=item.folder(store).relative_to(store.root).as_posix(),
        dead_window_tokens=dead_window,
        config=item.settings,
        package_version=package_version(),
        git_commit=git_commit(),
        device=placement.device_name,
        dtype=placement.dtype_name,
    )
