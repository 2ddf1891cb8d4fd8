"""`workbench harvest --ray`: a pool of Ray actors harvests whole chunks; the driver commits them (cluster.py).

Each actor loads the model once and, per chunk, runs the same ChunkWriter as a local harvest, so a chunk's
shards are byte-identical whoever computes them. It fsyncs its files and returns their ShardRecords; the
driver registers them with commit_chunk, one transaction per chunk, in whatever order they finish. Two
chunks are queued per actor, so an actor never waits for the driver's commit. An actor that dies (kill -9,
out of memory, a lost node) is replaced and its chunk given to the new one: it rewrites the same file names,
and the driver's final orphan sweep removes anything left that no commit points to.
"""

from __future__ import annotations

from collections import deque
from pathlib import Path

import numpy as np

from workbench.cluster import RESTARTS_PER_ACTOR, ClusterError, Pool, import_ray
from workbench.devices import resolve_placement
from workbench.harvest import ChunkWriter, HarvestConfig, resolve_store_dtype, sync_shards
from workbench.hooks import parse_hooks
from workbench.models import hook_widths, load_hf_model, make_backend, model_shape
from workbench.store import Store
from workbench.store.records import ShardRecord
from workbench.store.runs import commit_chunk

CHUNKS_QUEUED_PER_ACTOR = 2


class ChunkHarvester:
    """A Ray actor (wrapped by ray.remote in harvest_on_pool): holds the model, harvests whole chunks."""

    def setup(self, model_dir: str, config: HarvestConfig, root: str) -> str:
        """Load the model (a method, not __init__, so that its errors reach the driver as themselves)."""
        placement = resolve_placement(config.device, config.dtype)
        hf_model, tokenizer = load_hf_model(Path(model_dir), placement)
        n_layers, _ = model_shape(Path(model_dir))
        hooks = parse_hooks(config.hooks, n_layers)
        store_dtype = resolve_store_dtype(config.store_dtype, placement)
        self.root = Path(root)
        backend = make_backend(config.backend, hf_model, tokenizer)
        self.writer = ChunkWriter(
            backend,
            hooks,
            placement,
            store_dtype,
            config.batch_size,
            hook_widths(Path(model_dir), hooks),
            placement.device.type != "cpu",
        )
        return placement.describe()

    def harvest(self, run: str, chunk: int, chunk_ids: np.ndarray, first_token: int) -> list[ShardRecord]:
        written = self.writer.write(self.root, run, chunk, chunk_ids, first_token)
        return sync_shards(self.root, written)


def harvest_on_pool(
    pool: Pool,
    config: HarvestConfig,
    store: Store,
    run: str,
    contexts: np.ndarray,
    pending: list[int],
    chunk_contexts: int,
    model_dir: Path,
    bar,
) -> int:
    """Harvest the `pending` chunks of `run` on the pool's actors and commit each; returns the tokens harvested."""
    ray = import_ray()
    n_chunks = -(-len(contexts) // chunk_contexts)
    context_len = contexts.shape[1]

    def chunk_ids(chunk: int) -> np.ndarray:
        return contexts[chunk * chunk_contexts : (chunk + 1) * chunk_contexts]

    remote = ray.remote(**pool.options)(ChunkHarvester)
    root = str(store.root.resolve())

    def start_actor():
        actor = remote.remote()
        return actor, actor.setup.remote(str(model_dir.resolve()), config, root)

    started = [start_actor() for _ in range(pool.n_actors)]
    actors = [actor for actor, _ in started]
    for _, ready in started:
        _get(ray, ready)  # the model loads everywhere, or its error is raised here (before any chunk)
    queue = deque(pending)
    in_flight: dict = {}  # ObjectRef -> (chunk, actor)
    deaths = harvested = 0

    def top_up() -> None:  # keep CHUNKS_QUEUED_PER_ACTOR chunks queued on every live actor
        for actor in actors:
            queued = [owner for _, owner in in_flight.values()].count(actor)
            for _ in range(CHUNKS_QUEUED_PER_ACTOR - queued):
                if not queue:
                    return
                chunk = queue.popleft()
                ref = actor.harvest.remote(run, chunk, chunk_ids(chunk), chunk * chunk_contexts * context_len)
                in_flight[ref] = (chunk, actor)

    try:
        top_up()
        while in_flight:
            (ref,), _ = ray.wait(list(in_flight), num_returns=1)
            chunk, actor = in_flight.pop(ref)
            try:
                shards = ray.get(ref)
            except ray.exceptions.RayActorError as exc:  # the actor died: a new one redoes its chunks
                queue.appendleft(chunk)
                if actor in actors:  # first news of this death (its other queued chunk fails the same way)
                    deaths += 1
                    if deaths > RESTARTS_PER_ACTOR * pool.n_actors:
                        raise ClusterError(
                            f"Ray actors died {deaths} times ({exc}); stopping. Committed chunks are kept: fix the "
                            "cause (memory, a lost node) and run the same command again to resume."
                        ) from exc
                    replacement, ready = start_actor()
                    _get(ray, ready)
                    actors[actors.index(actor)] = replacement
            except ray.exceptions.RayTaskError as exc:
                raise exc.as_instanceof_cause() from None  # the actor's own error (a WorkbenchError says what to do)
            else:
                commit_chunk(store, shards, n_chunks)
                tokens = chunk_ids(chunk).size
                harvested += tokens
                bar.update(tokens)
            top_up()
    finally:
        for actor in actors:
            ray.kill(actor)
    return harvested


def _get(ray, ref):
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        raise exc.as_instanceof_cause() from None
