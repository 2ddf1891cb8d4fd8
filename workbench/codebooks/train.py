"""`workbench codebook train` and `encode`: codebooks on a workbench model, registered in the store.

train   tokenises a corpus, k-means-initialises the codebooks from the plain model's activations,
        fine-tunes (finetune.py), and records the held-out LM loss before and after in `codebooks`.
        Re-running the same command resumes an interrupted run from its checkpoint.
encode  runs the model with its codebooks over a harvest run's token contexts and writes the codes
        that fire as `codebook_codes` rows, keyed by the run's token ids, so SQL joins them to
        `tokens` and `documents` like `feature_acts`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from tqdm.auto import tqdm

from workbench.checkpoints import readable_folder
from workbench.codebooks.attach import CodebookModel
from workbench.codebooks.finetune import (
    CHECKPOINT,
    FinetuneSettings,
    codebook_identity,
    finetune,
    load_codebooks,
    mean_lm_loss,
    model_fingerprint,
    save_codebooks,
)
from workbench.devices import Placement, resolve_placement
from workbench.dictionaries.codebook import CodebookError
from workbench.store import Store, check_run_name, lookups
from workbench.store.codes import replace_codes
from workbench.store.records import CodebookRecord, RunRecord, insert, update


@dataclass
class CodebookTrainConfig:
    store: str
    """The store directory (created if missing)."""
    model: str
    """Registry name, local HF folder or hub id."""
    sites: list[str]
    """Sublayer outputs, e.g. blocks.3.mlp.hook_out: blocks.{l}.attn.hook_out, blocks.{l}.attn.hook_z (one codebook
    per head) or blocks.{l}.mlp.hook_out."""
    tokens: int = 65_536
    """Fine-tuning tokens, e.g. 64k."""
    n_codes: int = 1024
    """Codebook size per site, or per head at attn.hook_z."""
    k: int = 8
    """Codes per token per site."""
    reduce: str = "sum"
    """How the k codes combine: sum or mean."""
    corpus: str = "default"
    """default, a .txt/.jsonl/.parquet path, or hf:NAME."""
    text_column: str = "text"
    """Text field for .jsonl/.parquet/hf corpora."""
    context_len: int = 128
    """Tokens per context, including the BOS."""
    batch_size: int = 8
    """Contexts per step."""
    eval_tokens: int = 8192
    """Held out for the LM loss before and after."""
    kmeans_tokens: int = 16_384
    """Activations the codes are initialised from by k-means (at least n_codes)."""
    finetune: FinetuneSettings = field(default_factory=FinetuneSettings)
    """Learning rates, reconstruction weight, dead-code re-seeding and checkpoint interval."""
    name: str | None = None
    """Codebooks name; repeat it to resume (default: derived from model, sites, codes, k)."""
    seed: int = 0
    """Seed for fine-tuning."""
    device: str = "auto"
    """Where it runs: auto (cuda when available, else cpu), cpu, cuda, cuda:N or mps."""
    dtype: str = "auto"
    """Compute precision (autocast; the model's weights stay fp32): auto (bfloat16 on cuda, float32 elsewhere),
    float32, bfloat16 or float16."""


@dataclass
class CodebookTrainResult:
    """Finished codebooks: their catalog record, with the held-out LM losses and the reconstruction error."""

    codebook: CodebookRecord


def default_codebook_name(config: CodebookTrainConfig) -> str:
    from workbench.store import make_run_name

    sites = f"{len(config.sites)}site" + ("s" if len(config.sites) != 1 else "")
    return make_run_name("cb", Path(config.model).name, sites, f"c{config.n_codes}", f"k{config.k}")


def _check(config: CodebookTrainConfig) -> None:
    """Settings errors before the model loads (the bottleneck checks k again, for callers of the library)."""
    for name in ("tokens", "n_codes", "k", "context_len", "batch_size", "eval_tokens", "kmeans_tokens"):
        if getattr(config, name) <= 0:
            raise CodebookError(f"--{name.replace('_', '-')} must be positive.")
    if config.k > config.n_codes:
        raise CodebookError(f"k must be between 1 and the codebook size ({config.n_codes}); got k={config.k}.")
    if not config.sites:
        raise CodebookError("Name at least one site, e.g. --sites blocks.3.mlp.hook_out,blocks.3.attn.hook_out.")


def _resumable(settings: dict) -> dict:
    """The settings a resumed run must share with the original (device, dtype and checkpoint interval may change)."""
    settings = {key: value for key, value in settings.items() if key not in ("device", "dtype")}
    settings["finetune"] = {key: value for key, value in settings["finetune"].items() if key != "checkpoint_seconds"}
    return settings


def run_codebook_train(config: CodebookTrainConfig, *, progress: bool = True) -> CodebookTrainResult:
    """Fine-tune a model with codebooks at `config.sites` and register them; a finished run is returned as it is."""
    from workbench.corpus import tokenize_corpus
    from workbench.models.registry import load_hf_model, resolve_model_dir
    from workbench.provenance import git_commit, package_version

    _check(config)
    placement = resolve_placement(config.device, config.dtype)
    store = Store.create_or_open(config.store)
    name = check_run_name(config.name or default_codebook_name(config))
    # Fine-tuning keeps fp32 weights (Adam on bf16 weights loses small updates); the forward runs in autocast.
    hf_model, tokenizer = load_hf_model(
        resolve_model_dir(config.model, store.root / "models"), Placement(placement.device, torch.float32)
    )
    coded = CodebookModel(hf_model, config.sites, config.n_codes, config.k, config.reduce)  # checks sites and k
    identity = codebook_identity(coded, model_fingerprint(hf_model))
    settings = asdict(config)
    settings.pop("store")
    folder = store.root / "codebooks" / name

    existing = lookups.codebook(store, name)
    if existing:
        assert existing.config is not None  # run_codebook_train writes every codebooks record with its settings
        previous = _resumable(existing.config)
        differing = [key for key, value in _resumable(settings).items() if previous.get(key) != value]
        if differing:
            raise CodebookError(
                f"Codebooks '{name}' exist with different settings ({', '.join(differing)}); "
                "choose a new --name, or repeat the original arguments to resume them."
            )
        if existing.status == "complete":
            return CodebookTrainResult(existing)

    n_steps = -(-config.tokens // (config.batch_size * config.context_len))
    n_eval = -(-config.eval_tokens // config.context_len)
    corpus = tokenize_corpus(
        config.corpus,
        tokenizer,
        (n_steps * config.batch_size + n_eval) * config.context_len,
        config.context_len,
        config.text_column,
    )
    contexts = torch.from_numpy(corpus.contexts()).long().to(placement.device)
    if len(contexts) <= n_eval:
        raise CodebookError(
            f"The corpus gave {len(contexts)} contexts of {config.context_len} tokens: too few to hold out "
            f"{n_eval} for evaluation and train on the rest. Use a bigger corpus or lower --eval-tokens."
        )
    # The held-out contexts come first, so runs with different --tokens are scored on the same text.
    held_out, train_contexts = contexts[:n_eval], contexts[n_eval:]
    if len(train_contexts) < n_steps * config.batch_size:
        print(
            f"note: the corpus gave {len(train_contexts) * config.context_len:,} training tokens; "
            f"fine-tuning cycles through them to reach {config.tokens:,}."
        )

    def batch_at(step: int) -> torch.Tensor:
        rows = (np.arange(step * config.batch_size, (step + 1) * config.batch_size)) % len(train_contexts)
        return train_contexts[torch.from_numpy(rows)]

    torch.manual_seed(config.seed)

    def say(message: str) -> None:
        if progress:
            print(message, flush=True)

    if readable_folder(folder / CHECKPOINT) is None:  # a fresh run, or one stopped before its first checkpoint
        n_kmeans = max(-(-config.kmeans_tokens // config.context_len), -(-config.n_codes // config.context_len))
        say(f"Initialising the codes by k-means on {n_kmeans * config.context_len:,} tokens ...")
        coded.kmeans_init(train_contexts[:n_kmeans], batch_size=config.batch_size)
    if not existing:
        say(f"Measuring the original model's LM loss on {len(held_out) * config.context_len:,} held-out tokens ...")
        lm_loss_original = mean_lm_loss(coded, held_out, config.batch_size, codebooks=False)
        existing = CodebookRecord(
            name=name,
            model=config.model,
            model_fingerprint=identity["model_fingerprint"],
            sites=coded.sites,
            n_codes=config.n_codes,
            k=config.k,
            reduce=config.reduce,
            path=str(folder.relative_to(store.root)),
            lm_loss_original=lm_loss_original,
            config=settings,
            package_version=package_version(),
            git_commit=git_commit(),
            device=placement.device_name,
            dtype=placement.dtype_name,
        )
        with store.transaction() as con:
            insert(con, existing)
    assert existing.lm_loss_original is not None  # measured before the record is first inserted, just above
    lm_loss_original = existing.lm_loss_original

    with placement.autocast():
        state = finetune(coded, batch_at, n_steps, config.finetune, identity, folder, progress=progress)
    save_codebooks(coded, folder, identity, train_model=config.finetune.model_lr > 0)
    say("Measuring the held-out LM loss with the codebooks, and with them bypassed ...")
    lm_loss_codebooks = mean_lm_loss(coded, held_out, config.batch_size, codebooks=True)
    lm_loss_bypassed = mean_lm_loss(coded, held_out, config.batch_size, codebooks=False)
    with store.transaction() as con:
        update(
            con,
            CodebookRecord,
            {"name": name},
            status="complete",
            steps_done=state.step,
            tokens_done=state.tokens,
            lm_loss_codebooks=lm_loss_codebooks,
            lm_loss_increase=lm_loss_codebooks - lm_loss_original,
            lm_loss_bypassed=lm_loss_bypassed,
            recon_error=state.last_recon,
        )
    finished = lookups.codebook(store, name)
    assert finished is not None  # inserted above
    return CodebookTrainResult(finished)


def open_codebook_model(
    store: Store, name: str, device: torch.device | str = "cpu"
) -> tuple[CodebookModel, object, CodebookRecord]:
    """(model with its trained codebooks, tokenizer, catalog record) for finished codebooks in the store."""
    from workbench.models.registry import load_hf_model, resolve_model_dir

    record = lookups.completed_codebook(store, name)
    hf_model, tokenizer = load_hf_model(
        resolve_model_dir(record.model, store.root / "models"), Placement(torch.device(device), torch.float32)
    )
    coded = CodebookModel(hf_model, list(record.sites), record.n_codes, record.k, record.reduce)
    load_codebooks(coded, store.root / record.path, codebook_identity(coded, model_fingerprint(hf_model)))
    return coded.eval(), tokenizer, record


def run_contexts(store: Store, run: RunRecord) -> tuple[torch.Tensor, torch.Tensor]:
    """(vocab ids, token ids), each [contexts, context_len], of a harvest run's tokens."""
    vocab_ids = torch.from_numpy(store.contexts(run.run))
    if vocab_ids.numel() == 0:
        raise CodebookError(f"Run '{run.run}' has no committed tokens yet; finish its harvest first.")
    return vocab_ids, torch.arange(vocab_ids.numel()).reshape(vocab_ids.shape)  # token_id is the row index in the run


@dataclass
class CodebookEncodeConfig:
    store: str
    """The store directory."""
    codebook: str
    """Codebooks name (see the codebooks table)."""
    run: str
    """A harvest run of the same model."""
    batch_size: int = 8
    """Contexts per forward pass."""
    device: str = "auto"
    """Where it runs: auto (cuda when available, else cpu), cpu, cuda, cuda:N or mps."""
    dtype: str = "auto"
    """Compute precision (autocast; the model's weights stay fp32): auto (bfloat16 on cuda, float32 elsewhere),
    float32, bfloat16 or float16."""


@dataclass
class CodebookEncodeResult:
    """Codes written for a run: the codebooks' record, the run, and the codebook_codes rows written."""

    codebook: CodebookRecord
    run: str
    rows: int


def run_codebook_encode(config: CodebookEncodeConfig, *, progress: bool = True) -> CodebookEncodeResult:
    """Write the codes that fire on every token of the run as codebook_codes rows, replacing any earlier rows of
    (codebooks, run) in one transaction."""
    placement = resolve_placement(config.device, config.dtype)
    store = Store.open_existing(config.store)
    name, batch_size = config.codebook, config.batch_size
    coded, _, record = open_codebook_model(store, name, placement.device)
    run = lookups.run(store, config.run)
    if run.model != record.model:
        raise CodebookError(
            f"Run '{run.run}' was harvested from '{run.model}', but codebooks '{name}' belong to "
            f"'{record.model}'. Encode a run of the same model."
        )
    vocab_ids, token_ids = run_contexts(store, run)
    vocab_size = coded.hf_model.config.vocab_size
    if int(vocab_ids.max()) >= vocab_size:
        raise CodebookError(
            f"Run '{run.run}' has token ids beyond this model's vocabulary ({vocab_size}); it is another model's run."
        )
    # Text columns are dictionary-encoded (an index per row into a handful of strings): a million-token run at
    # two sites with k = 8 is 16M rows, and plain string arrays of that length would cost gigabytes.
    columns: dict[str, list[np.ndarray]] = {"token_id": [], "site": [], "rank": [], "code": [], "similarity": []}
    with torch.no_grad(), placement.autocast():
        for start in tqdm(
            range(0, len(vocab_ids), batch_size), unit="batch", desc=f"codes {name}", disable=not progress
        ):
            coded(vocab_ids[start : start + batch_size].to(placement.device))
            tokens = token_ids[start : start + batch_size]
            for index, site in enumerate(coded.sites):
                codes = coded.codes[site]  # [batch, seq, k] (k per head at a per-head site)
                k = codes.shape[-1]
                columns["token_id"].append(tokens[..., None].expand_as(codes).reshape(-1).numpy())
                columns["site"].append(np.full(codes.numel(), index, dtype=np.int32))
                columns["rank"].append(np.tile(np.arange(k, dtype=np.int8), codes.numel() // k))
                columns["code"].append(codes.reshape(-1).cpu().numpy().astype(np.int32))
                columns["similarity"].append(coded.similarities[site].reshape(-1).float().cpu().numpy())
    n_rows = sum(len(c) for c in columns["code"])

    def constant(text: str) -> pa.DictionaryArray:
        return pa.DictionaryArray.from_arrays(np.zeros(n_rows, dtype=np.int32), pa.array([text]))

    table = pa.table(
        {
            "codebook": constant(name),
            "run": constant(run.run),
            "token_id": np.concatenate(columns["token_id"]),
            "site": pa.DictionaryArray.from_arrays(np.concatenate(columns["site"]), pa.array(coded.sites)),
            "rank": np.concatenate(columns["rank"]),
            "code": np.concatenate(columns["code"]),
            "similarity": np.concatenate(columns["similarity"]),
        }
    )
    replace_codes(store, name, run.run, table)
    return CodebookEncodeResult(record, run.run, table.num_rows)
