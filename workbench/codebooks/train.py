"""`workbench codebook train` and `encode`: codebooks on a workbench model, registered in the store.

train   tokenises a corpus, k-means-initialises the codebooks from the plain model's activations,
        fine-tunes (finetune.py), and records the held-out LM loss before and after in `codebooks`.
        Re-running the same command resumes an interrupted run from its checkpoint.
encode  runs the model with its codebooks over a harvest run's token contexts and writes the codes
        that fire as `codebook_codes` rows, keyed by the run's token ids, so SQL joins them to
        `tokens` and `documents` like `feature_acts`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from tqdm.auto import tqdm

from workbench.codebooks.attach import CodebookModel
from workbench.codebooks.finetune import (CHECKPOINT, FinetuneSettings, codebook_identity, finetune, load_codebooks, mean_lm_loss,
                                          model_fingerprint, save_codebooks)
from workbench.dictionaries.codebook import CodebookError
from workbench.checkpoints import readable_folder


@dataclass
class CodebookTrainConfig:
    store: str
    model: str
    sites: list[str]
    tokens: int = 65_536                 # fine-tuning tokens
    n_codes: int = 1024
    k: int = 8
    reduce: str = "sum"
    corpus: str = "default"
    text_column: str = "text"
    context_len: int = 128
    batch_size: int = 8
    eval_tokens: int = 8192              # held out, for the LM loss before and after
    kmeans_tokens: int = 16_384          # activations the codes are initialised from (at least n_codes)
    finetune: FinetuneSettings = field(default_factory=FinetuneSettings)
    name: str | None = None
    seed: int = 0
    device: str = "cpu"


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
    """The settings a resumed run must share with the original (device and checkpoint interval may change)."""
    settings = {key: value for key, value in settings.items() if key != "device"}
    settings["finetune"] = {key: value for key, value in settings["finetune"].items() if key != "checkpoint_seconds"}
    return settings


def train_codebooks(config: CodebookTrainConfig, progress: bool = True) -> str:
    """Fine-tune a model with codebooks at `config.sites` and register them; returns their name."""
    from workbench.corpus import tokenize_corpus
    from workbench.models.registry import load_hf_model, resolve_model_dir
    from workbench.provenance import git_commit, package_version
    from workbench.store import Store, check_run_name

    _check(config)
    store = Store.create_or_open(config.store)
    name = check_run_name(config.name or default_codebook_name(config))
    hf_model, tokenizer = load_hf_model(resolve_model_dir(config.model, store.root / "models"), config.device)
    coded = CodebookModel(hf_model, config.sites, config.n_codes, config.k, config.reduce)  # checks sites and k
    identity = codebook_identity(coded, model_fingerprint(hf_model))
    settings = asdict(config)
    settings.pop("store")
    folder = store.root / "codebooks" / name

    with store.reader() as con:
        existing = con.execute("SELECT config, status FROM codebooks WHERE name = ?", [name]).fetchone()
    if existing:
        previous = _resumable(json.loads(existing[0]))
        differing = [key for key, value in _resumable(settings).items() if previous.get(key) != value]
        if differing:
            raise CodebookError(f"Codebooks '{name}' exist with different settings ({', '.join(differing)}); "
                                "choose a new --name, or repeat the original arguments to resume them.")
        if existing[1] == "complete":
            return name

    n_steps = -(-config.tokens // (config.batch_size * config.context_len))
    n_eval = -(-config.eval_tokens // config.context_len)
    corpus = tokenize_corpus(config.corpus, tokenizer, (n_steps * config.batch_size + n_eval) * config.context_len,
                             config.context_len, config.text_column)
    contexts = torch.from_numpy(corpus.contexts()).long().to(config.device)
    if len(contexts) <= n_eval:
        raise CodebookError(f"The corpus gave {len(contexts)} contexts of {config.context_len} tokens: too few to hold out "
                            f"{n_eval} for evaluation and train on the rest. Use a bigger corpus or lower --eval-tokens.")
    # The held-out contexts come first, so runs with different --tokens are scored on the same text.
    held_out, train_contexts = contexts[:n_eval], contexts[n_eval:]
    if len(train_contexts) < n_steps * config.batch_size:
        print(f"note: the corpus gave {len(train_contexts) * config.context_len:,} training tokens; "
              f"fine-tuning cycles through them to reach {config.tokens:,}.")

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
        with store.transaction() as con:
            con.execute("INSERT INTO codebooks VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'training', 0, 0, ?, NULL, NULL, NULL, "
                        "NULL, ?, ?, ?, now(), now())",
                        [name, config.model, identity["model_fingerprint"], coded.sites, config.n_codes, config.k,
                         config.reduce, str(folder.relative_to(store.root)), lm_loss_original, json.dumps(settings),
                         package_version(), git_commit()])
    with store.reader() as con:
        lm_loss_original = con.execute("SELECT lm_loss_original FROM codebooks WHERE name = ?", [name]).fetchone()[0]

    state = finetune(coded, batch_at, n_steps, config.finetune, identity, folder, progress=progress)
    save_codebooks(coded, folder, identity, train_model=config.finetune.model_lr > 0)
    say("Measuring the held-out LM loss with the codebooks, and with them bypassed ...")
    lm_loss_codebooks = mean_lm_loss(coded, held_out, config.batch_size, codebooks=True)
    lm_loss_bypassed = mean_lm_loss(coded, held_out, config.batch_size, codebooks=False)
    with store.transaction() as con:
        con.execute("UPDATE codebooks SET status = 'complete', steps_done = ?, tokens_done = ?, lm_loss_codebooks = ?, "
                    "lm_loss_increase = ?, lm_loss_bypassed = ?, recon_error = ?, updated_at = now() WHERE name = ?",
                    [state.step, state.tokens, lm_loss_codebooks, lm_loss_codebooks - lm_loss_original, lm_loss_bypassed,
                     state.last_recon, name])
    return name


def completed_codebooks(store, name: str) -> dict:
    """The catalog row of finished codebooks, or an error that says what to do."""
    with store.reader() as con:
        row = con.execute("SELECT name, model, sites, n_codes, k, reduce, path, status FROM codebooks WHERE name = ?",
                          [name]).fetchone()
        known = [r[0] for r in con.execute("SELECT name FROM codebooks ORDER BY name").fetchall()] if row is None else []
    if row is None:
        raise CodebookError(f"No codebooks '{name}' in the store. Known: {', '.join(known) or 'none (run `workbench codebook train`)'}.")
    record = dict(zip(("name", "model", "sites", "n_codes", "k", "reduce", "path", "status"), row))
    if record["status"] != "complete":
        raise CodebookError(f"Codebooks '{name}' are still training; run the same `workbench codebook train` command to finish them.")
    return record


def open_codebook_model(store, name: str, device: str = "cpu") -> tuple[CodebookModel, object, dict]:
    """(model with its trained codebooks, tokenizer, catalog row) for finished codebooks in the store."""
    from workbench.models.registry import load_hf_model, resolve_model_dir

    record = completed_codebooks(store, name)
    hf_model, tokenizer = load_hf_model(resolve_model_dir(record["model"], store.root / "models"), device)
    coded = CodebookModel(hf_model, list(record["sites"]), record["n_codes"], record["k"], record["reduce"])
    load_codebooks(coded, store.root / record["path"], codebook_identity(coded, model_fingerprint(hf_model)))
    return coded.eval(), tokenizer, record


def run_contexts(store, run: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(vocab ids, token ids), each [contexts, context_len], of a harvest run's tokens."""
    with store.reader() as con:
        known = [r[0] for r in con.execute("SELECT run FROM runs ORDER BY run").fetchall()]
    if run not in known:
        raise CodebookError(f"No run '{run}' in the store. Known: {', '.join(known) or 'none (run `workbench harvest`)'}.")
    vocab_ids = torch.from_numpy(store.contexts(run))
    if vocab_ids.numel() == 0:
        raise CodebookError(f"Run '{run}' has no committed tokens yet; finish its harvest first.")
    return vocab_ids, torch.arange(vocab_ids.numel()).reshape(vocab_ids.shape)  # token_id is the row index in the run


def encode_codes(store_path: str, name: str, run: str, batch_size: int = 8, progress: bool = True) -> int:
    """Write the codes that fire on every token of `run` as codebook_codes rows; returns the row count.
    Replaces any earlier rows of (name, run) in one transaction."""
    from workbench.store import Store

    store = Store.open_existing(store_path)
    coded, _, record = open_codebook_model(store, name)
    with store.reader() as con:
        run_model = con.execute("SELECT model, model_dir FROM runs WHERE run = ?", [run]).fetchone()
    if run_model is not None and run_model[0] != record["model"]:
        raise CodebookError(f"Run '{run}' was harvested from '{run_model[0]}', but codebooks '{name}' belong to "
                            f"'{record['model']}'. Encode a run of the same model.")
    vocab_ids, token_ids = run_contexts(store, run)
    vocab_size = coded.hf_model.config.vocab_size
    if int(vocab_ids.max()) >= vocab_size:
        raise CodebookError(f"Run '{run}' has token ids beyond this model's vocabulary ({vocab_size}); it is another model's run.")
    # Text columns are dictionary-encoded (an index per row into a handful of strings): a million-token run at
    # two sites with k = 8 is 16M rows, and plain string arrays of that length would cost gigabytes.
    columns: dict[str, list[np.ndarray]] = {"token_id": [], "site": [], "rank": [], "code": [], "similarity": []}
    with torch.no_grad():
        for start in tqdm(range(0, len(vocab_ids), batch_size), unit="batch", desc=f"codes {name}", disable=not progress):
            coded(vocab_ids[start:start + batch_size])
            tokens = token_ids[start:start + batch_size]
            for index, site in enumerate(coded.sites):
                codes = coded.codes[site]  # [batch, seq, k] (k per head at a per-head site)
                k = codes.shape[-1]
                columns["token_id"].append(tokens[..., None].expand_as(codes).reshape(-1).numpy())
                columns["site"].append(np.full(codes.numel(), index, dtype=np.int32))
                columns["rank"].append(np.tile(np.arange(k, dtype=np.int8), codes.numel() // k))
                columns["code"].append(codes.reshape(-1).numpy().astype(np.int32))
                columns["similarity"].append(coded.similarities[site].reshape(-1).float().numpy())
    n_rows = sum(len(c) for c in columns["code"])

    def constant(text: str) -> pa.DictionaryArray:
        return pa.DictionaryArray.from_arrays(np.zeros(n_rows, dtype=np.int32), pa.array([text]))

    table = pa.table({"codebook": constant(name), "run": constant(run),
                      "token_id": np.concatenate(columns["token_id"]),
                      "site": pa.DictionaryArray.from_arrays(np.concatenate(columns["site"]), pa.array(coded.sites)),
                      "rank": np.concatenate(columns["rank"]),
                      "code": np.concatenate(columns["code"]),
                      "similarity": np.concatenate(columns["similarity"])})
    with store.transaction() as con:
        con.execute("DELETE FROM codebook_codes WHERE codebook = ? AND run = ?", [name, run])
        con.register("new_codes", table)
        con.execute("INSERT INTO codebook_codes SELECT * FROM new_codes")
    return table.num_rows
