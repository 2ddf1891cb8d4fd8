"""Model + corpus + hook points -> activation shards in a store.

The unit of work is a chunk of `chunk_contexts` contexts. For each chunk the
harvest runs the backend (stopped after the deepest hook), writes one shard per
hook, and then registers all of them in one catalog transaction. A kill at any
moment therefore loses at most the chunk in flight: re-running the same command
(same --run) finds the committed chunks, deletes files no commit points to, and
harvests the rest.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pyarrow as pa
import torch
from tqdm.auto import tqdm

from workbench.corpus import TokenizedCorpus, corpus_label, tokenize_corpus
from workbench.devices import Placement, explain_out_of_memory, resolve_placement
from workbench.errors import RunConflictError, WorkbenchError
from workbench.hooks import HookPoint, parse_hooks
from workbench.models import (
    hook_widths,
    load_hf_model,
    load_tokenizer,
    make_backend,
    model_shape,
    resolve_model_dir,
)
from workbench.provenance import git_commit, package_version
from workbench.store import Store, check_run_name, lookups, make_run_name
from workbench.store.records import HookPointRecord, RunRecord, ShardRecord, read_all, read_one
from workbench.store.runs import commit_chunk, committed_chunks, create_run
from workbench.store.shards import STORE_DTYPES, ShardBuilder, sync_files, to_store_dtype


@dataclass
class HarvestConfig:
    model: str
    """Registry name, local HF folder or hub id (see `workbench models`)."""
    hooks: list[str]
    """Hook points to harvest, e.g. blocks.6.hook_out (canonical or legacy names)."""
    store: str
    """The store directory (created if missing)."""
    corpus: str = "default"
    """'default' (CPython's pydoc topics, ~114k SmolLM2 tokens), a .txt/.md file or folder, .jsonl, .parquet, or
    hf:NAME[:CONFIG]."""
    tokens: int = 50_000
    """Tokens to harvest, rounded up to whole contexts; capped by the corpus."""
    run: str | None = None
    """Run name; repeat it to resume (default: derived from model, corpus and tokens)."""
    backend: str = "nnsight"  # measured ~0% over a bare forward; the TransformerLens bridge costs ~15%
    """Hooking library; both give the same numbers, nnsight is faster here."""
    context_len: int = 128
    """Tokens per context, including the BOS."""
    batch_size: int = 8
    """Contexts per forward pass."""
    chunk_contexts: int = 64
    """Contexts per shard: the unit of commit, and the most a crash can lose."""
    device: str = "auto"
    """Where the model runs: auto (cuda when available, else cpu), cpu, cuda, cuda:N or mps."""
    dtype: str = "auto"
    """The model's compute precision: auto (bfloat16 on cuda, float32 elsewhere), float32, bfloat16 or float16."""
    device_map: str | None = None
    """Spread a model too big for one device over several: auto (accelerate's map: every visible GPU, then CPU),
    balanced, sequential, or a JSON {module: device}. The inputs go to --device, which must hold the embedding."""
    store_dtype: str = "auto"
    """Precision of the stored shards: auto (the model's dtype when it is bfloat16 or float16, else float32: a
    bf16 model's activations are stored losslessly in half the bytes), float32, bfloat16 (0.42x the bytes,
    every reader sees FLOAT) or float16 (0.55x, range +-65504). Fixed for the run: a resume must repeat it."""
    encode_threads: int | None = None
    """Threads that encode shards beside the forward pass: 0 encodes on the forward pass's thread (default on
    a CPU, where a busy second thread slows torch), 1 gives each hook its own thread (default on a GPU)."""
    text_column: str = "text"
    """Text field for .jsonl/.parquet/hf corpora."""
    ray: str | None = None
    """Harvest on a Ray cluster: its address (HOST:PORT, ray://HOST:PORT or auto), or 'local' (what --ray alone
    means) to start one on this machine. Actors hold the model and write shards; this process alone commits.
    The store must be on a filesystem every node mounts at the same path (checked first)."""
    workers: int | None = None
    """With --ray: how many actors (default: one per GPU of the cluster, else one per node; --ray --workers 4
    makes a local cluster of 4 CPU workers)."""

    # Arguments that must match when a run is resumed; batch size and device may change (the compute dtype
    # and the store dtype may not: they change the stored numbers, checked in _check_resumable).
    IDENTITY_FIELDS: ClassVar[tuple[str, ...]] = (
        "model",
        "backend",
        "corpus",
        "text_column",
        "tokens",
        "context_len",
        "chunk_contexts",
    )

    def __post_init__(self) -> None:
        if self.tokens <= 0 or self.batch_size <= 0 or self.chunk_contexts <= 0:
            raise WorkbenchError("--tokens, --batch-size and --chunk-contexts must be positive.")
        if self.store_dtype not in ("auto", *STORE_DTYPES):
            raise WorkbenchError(f"Unknown --store-dtype '{self.store_dtype}'; use one of {', '.join(STORE_DTYPES)}.")


@dataclass
class HarvestResult:
    run: str
    """The run's name."""
    n_tokens: int
    """Tokens the run holds once complete."""
    tokens_harvested_now: int
    """Tokens harvested by this call (0 when the run was already complete)."""
    chunks_resumed_from: int
    """Chunks that were already committed when this call started."""
    orphans_removed: int
    """Shard files of uncommitted chunks (left by a kill) deleted before resuming."""
    seconds_harvesting: float = 0.0
    """Seconds in the chunk loop only: forward passes, shard writes and commits."""


def resolve_store_dtype(store_dtype: str, placement: Placement) -> str:
    """auto: the model's own precision when it is a half one (storing it in fp32 would only double the bytes)."""
    if store_dtype != "auto":
        return store_dtype
    return placement.dtype_name if placement.dtype_name in ("bfloat16", "float16") else "float32"


def default_run_name(config: HarvestConfig) -> str:
    """Deterministic, so that repeating a command without --run resumes the same run."""
    return make_run_name(Path(config.model).name, corpus_label(config.corpus), str(config.tokens))


def _check_resumable(
    existing: RunRecord,
    config: HarvestConfig,
    hooks: list[HookPoint],
    run: str,
    placement: Placement,
    stored_dtype: str,
    store_dtype: str,
) -> None:
    previous = existing.config or {}
    problems = [
        f"{name}: stored {previous.get(name)!r}, now {getattr(config, name)!r}"
        for name in config.IDENTITY_FIELDS
        if previous.get(name) != getattr(config, name)
    ]
    if stored_dtype != store_dtype:
        problems.append(
            f"store dtype: its shards are {stored_dtype}, now {store_dtype} (give --store-dtype {stored_dtype})"
        )
    ran_in = existing.dtype or "float32"  # runs from before schema v6 ran in fp32
    if ran_in != placement.dtype_name:
        problems.append(f"model dtype: it ran in {ran_in}, now {placement.dtype_name} (give --dtype {ran_in})")
    if set(existing.hooks) != {h.name for h in hooks}:
        problems.insert(0, f"hooks: stored {', '.join(existing.hooks)}; now {', '.join(h.name for h in hooks)}")
    if problems:
        raise RunConflictError(
            f"Run '{run}' already exists with different settings, so it cannot be resumed:\n  - "
            + "\n  - ".join(problems)
            + "\nChoose a new --run name, or repeat the original arguments to resume it. Nothing was changed."
        )


def _token_strings(corpus: TokenizedCorpus, tokenizer) -> list[str]:
    """Each token's text, sliced from its document, so SQL shows exactly what the model read."""
    special = {}
    strings = []
    for vocab_id, doc_id, start, end in zip(
        corpus.vocab_ids.tolist(), corpus.doc_ids.tolist(), corpus.char_starts.tolist(), corpus.char_ends.tolist()
    ):
        if doc_id < 0:
            if vocab_id not in special:
                special[vocab_id] = tokenizer.convert_ids_to_tokens(vocab_id)
            strings.append(special[vocab_id])
        else:
            strings.append(corpus.documents[doc_id].text[start:end])
    return strings


def record_run(
    store: Store,
    run: str,
    config: HarvestConfig,
    hooks: list[HookPoint],
    corpus: TokenizedCorpus,
    tokenizer,
    model_dir: Path,
    n_layers: int,
    d_model: int,
    placement: Placement,
    points: bool = True,
) -> None:
    """Register a run's corpus slice (runs, tokens, documents) and, with `points`, its hook points."""
    n = corpus.n_tokens
    positions = np.tile(np.arange(corpus.context_len, dtype=np.int32), corpus.n_contexts)
    tokens = pa.table(
        {
            "run": pa.array([run] * n),
            "token_id": pa.array(np.arange(n, dtype=np.int64)),
            "context_id": pa.array(np.repeat(np.arange(corpus.n_contexts, dtype=np.int32), corpus.context_len)),
            "position": pa.array(positions),
            "vocab_id": pa.array(corpus.vocab_ids),
            "token": pa.array(_token_strings(corpus, tokenizer)),
            "doc_id": pa.array(corpus.doc_ids, mask=corpus.doc_ids < 0),
            "char_start": pa.array(corpus.char_starts, mask=corpus.doc_ids < 0),
            "char_end": pa.array(corpus.char_ends, mask=corpus.doc_ids < 0),
        }
    )
    documents = pa.table(
        {
            "run": pa.array([run] * len(corpus.documents)),
            "doc_id": pa.array([d.doc_id for d in corpus.documents], pa.int32()),
            "source": pa.array([d.source for d in corpus.documents]),
            "text": pa.array([d.text for d in corpus.documents]),
        }
    )
    record = RunRecord(
        run=run,
        model=config.model,
        model_dir=str(model_dir),
        backend=config.backend,
        hooks=[h.name for h in hooks],
        corpus=config.corpus,
        text_column=config.text_column,
        context_len=corpus.context_len,
        tokens_requested=config.tokens,
        n_contexts=corpus.n_contexts,
        n_tokens=n,
        chunk_contexts=config.chunk_contexts,
        n_layers=n_layers,
        d_model=d_model,
        config=asdict(config),
        device=placement.device_name,
        dtype=placement.dtype_name,
        package_version=package_version(),
        git_commit=git_commit(),
    )
    widths = hook_widths(model_dir, hooks)
    hook_points = [
        HookPointRecord(
            run=run,
            hook=h.name,
            layer=h.layer,
            kind=h.kind,
            d=widths[h.name],
            dtype=resolve_store_dtype(config.store_dtype, placement),
        )
        for h in hooks
    ]
    create_run(store, record, hook_points if points else [], tokens, documents)


def run_harvest(config: HarvestConfig, *, progress: bool = True) -> HarvestResult:
    """Harvest a model's activations at some hook points into a store; re-running the same config resumes."""
    # Check hook names before anything slow (building a registry model takes ~20 s).
    parse_hooks(config.hooks, n_layers=10**6)
    pool = None
    if config.ray is not None:  # a cluster that does not answer, or cannot see the store, fails before any write
        from workbench.cluster import connect

        pool = connect(config.ray, config.workers, config.store)
        placement = pool.placement(config.device, config.dtype)
    else:
        placement = resolve_placement(config.device, config.dtype)
    store_dtype = resolve_store_dtype(config.store_dtype, placement)
    store = Store.create_or_open(config.store)
    model_dir = resolve_model_dir(config.model, store.root / "models")
    n_layers, d_model = model_shape(model_dir)
    hooks = parse_hooks(config.hooks, n_layers)
    run = check_run_name(config.run or default_run_name(config))

    with store.reader() as con:
        existing = read_one(con, RunRecord, run=run)
        stored_dtypes = {point.dtype for point in read_all(con, HookPointRecord, run=run)}
    if existing:
        stored = stored_dtypes.pop() if stored_dtypes else "float32"
        _check_resumable(existing, config, hooks, run, placement, stored, store_dtype)
    if pool is None:
        hf_model, tokenizer = load_hf_model(model_dir, placement, config.device_map)
    else:  # the actors load the model; the driver needs only the tokenizer
        tokenizer = load_tokenizer(model_dir)
    if not existing:
        corpus = tokenize_corpus(config.corpus, tokenizer, config.tokens, config.context_len, config.text_column)
        record_run(store, run, config, hooks, corpus, tokenizer, model_dir, n_layers, d_model, placement)

    contexts = store.contexts(run)  # read back from the store, not the corpus
    chunk_contexts = lookups.run(store, run).chunk_contexts
    context_len = contexts.shape[1]
    n_chunks = -(-len(contexts) // chunk_contexts)
    orphans = store.remove_orphan_files(run)
    done = committed_chunks(store, run, len(hooks))
    pending = [c for c in range(n_chunks) if c not in done]
    if not pending:
        return HarvestResult(run, contexts.size, 0, len(done), orphans)

    bar = tqdm(
        total=contexts.size,
        initial=(n_chunks - len(pending)) * chunk_contexts * context_len,
        unit="tok",
        unit_scale=True,
        desc=f"harvest {run}",
        disable=not progress,
        dynamic_ncols=True,
    )
    harvested = 0
    started = time.perf_counter()
    if pool is not None:
        from workbench.cluster_harvest import harvest_on_pool

        with bar:
            harvested = harvest_on_pool(pool, config, store, run, contexts, pending, chunk_contexts, model_dir, bar)
        orphans += store.remove_orphan_files(run)  # files of chunks whose actor died mid-write, not re-written
        return HarvestResult(
            run, contexts.size, harvested, n_chunks - len(pending), orphans, time.perf_counter() - started
        )
    backend = make_backend(config.backend, hf_model, tokenizer)
    # Encoding shards is CPU work (~40-60 ms per hook per 8,192 tokens at d=576). On a CPU it stays on this
    # thread, batch by batch while the activations are in cache: on a 2-core machine a second busy thread
    # stalls torch's OpenMP workers (measured: +5-10% harvest time). On a GPU the forward pass is far faster
    # than that, so each hook's shard is encoded on its own thread (pyarrow releases the GIL) while the GPU
    # runs on (--encode-threads). fsync and the catalog commit mostly wait on the disk, so they overlap the
    # next chunk on one background thread; at most one chunk awaits its commit, and commits stay in order.
    threads = (
        config.encode_threads if config.encode_threads is not None else (0 if placement.device.type == "cpu" else 1)
    )
    widths = hook_widths(model_dir, hooks)
    writer = ChunkWriter(backend, hooks, placement, store_dtype, config.batch_size, widths, threads > 0)
    with bar, ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-commit") as committer:
        in_flight = None
        try:
            for chunk in pending:
                chunk_ids = contexts[chunk * chunk_contexts : (chunk + 1) * chunk_contexts]
                first_token = chunk * chunk_contexts * context_len
                written = writer.write(store.root, run, chunk, chunk_ids, first_token, bar.update)
                if in_flight is not None:
                    in_flight.result()  # re-raises a failed encoding, sync or commit of the previous chunk
                in_flight = committer.submit(_sync_and_commit, store, written, n_chunks)
                harvested += chunk_ids.size
            assert in_flight is not None  # pending is not empty (checked above)
            in_flight.result()
        finally:
            writer.close()
    return HarvestResult(run, contexts.size, harvested, n_chunks - len(pending), orphans, time.perf_counter() - started)


class ChunkWriter:
    """Runs the model over one chunk's contexts and writes one shard per hook: the local harvest's loop body,
    and what each Ray actor does (workbench/cluster_harvest.py). The files are written, not yet synced or
    registered (sync_shards, then commit_chunk)."""

    def __init__(self, backend, hooks, placement: Placement, store_dtype: str, batch_size: int, widths, threaded):
        self.backend, self.hooks, self.placement = backend, hooks, placement
        self.store_dtype, self.batch_size, self.widths = store_dtype, batch_size, widths  # hook name -> values per row
        self.builders = {h: ShardBuilder() for h in hooks}
        self.encoders = {h: _Encoder(threaded) for h in hooks}

    def write(self, root: Path, run: str, chunk: int, chunk_ids: np.ndarray, first_token: int, progress=None):
        bytes_per_value = 2 if self.store_dtype == "float16" else 4
        for hook, builder in self.builders.items():
            self.encoders[hook].submit(builder.start, chunk_ids.size * (self.widths[hook.name] * bytes_per_value + 8))
        context_len = chunk_ids.shape[1]
        for start in range(0, len(chunk_ids), self.batch_size):
            batch = torch.from_numpy(chunk_ids[start : start + self.batch_size]).to(self.placement.device)
            batch_first = first_token + start * context_len
            token_ids = np.arange(batch_first, batch_first + batch.numel(), dtype=np.int64)
            with explain_out_of_memory("The harvest", self.batch_size, self.placement.device):
                captured = self.backend.capture(batch, self.hooks)
            for hook, acts in captured.items():
                values = to_store_dtype(acts.reshape(-1, self.widths[hook.name]), self.store_dtype)
                self.encoders[hook].submit(self.builders[hook].append, token_ids, values)
            if progress is not None:
                progress(batch.numel())

        files = {}
        for hook in self.hooks:
            path = Store.shard_path(run, hook.name, chunk)
            files[hook] = (path, self.encoders[hook].submit(self.builders[hook].finish, root / path))
        return WrittenChunk(run, chunk, first_token, files)

    def close(self) -> None:
        for encoder in self.encoders.values():
            encoder.close()


def _sync_and_commit(store: Store, written: WrittenChunk, n_chunks: int) -> None:
    commit_chunk(store, sync_shards(store.root, written), n_chunks)


@dataclass
class WrittenChunk:
    """One chunk's shards as ChunkWriter.write left them: written (or being written), not yet synced."""

    run: str
    chunk: int
    first_token: int
    files: dict[HookPoint, tuple[str, Future]]  # per hook: its store-relative path, and its ShardInfo to come


def sync_shards(root: Path, written: WrittenChunk) -> list[ShardRecord]:
    """Once every hook's shard of a chunk is written, make the files durable (fsync) and return their records."""
    shards = []
    for hook, (path, future) in written.files.items():
        info = future.result()
        shards.append(
            ShardRecord(
                run=written.run,
                hook=hook.name,
                chunk=written.chunk,
                path=path,
                first_token=written.first_token,
                n_rows=info.n_rows,
                n_bytes=info.n_bytes,
                sha256=info.sha256,
            )
        )
    sync_files([root / shard.path for shard in shards])
    return shards


class _Encoder:
    """Runs one hook's shard-building calls in order: inline, or on a thread of its own."""

    def __init__(self, threaded: bool):
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-encode") if threaded else None

    def submit(self, function, *args) -> Future:
        if self._pool is not None:
            return self._pool.submit(function, *args)
        done: Future = Future()
        done.set_result(function(*args))  # inline: an error raises here, at once
        return done

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
