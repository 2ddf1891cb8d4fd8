"""`workbench encode --ray`: the map and merge passes of a parquet encode on a pool of Ray actors (cluster.py).

Each actor holds the dictionary (FeatureEncoder). Map tasks encode groups of shards into sorted staged runs;
merge tasks build one bucket file each. Both write fixed paths and are idempotent, so an actor that dies is
restarted by Ray and its task retried; the driver commits once, after every bucket is written.
"""

from __future__ import annotations

from workbench.cluster import RESTARTS_PER_ACTOR, ClusterError, Pool, import_ray
from workbench.encode import EncodeConfig, FeatureEncoder
from workbench.store import Store
from workbench.store.features import feature_part_path


def encode_on_pool(pool: Pool, args: tuple, groups, staged, record, config: EncodeConfig, generation: str,
                   store: Store, bar) -> tuple[int, list]:  # fmt: skip
    ray = import_ray()
    from ray.util import ActorPool

    remote = ray.remote(max_restarts=RESTARTS_PER_ACTOR, max_task_retries=RESTARTS_PER_ACTOR, **pool.options)(
        FeatureEncoder
    )
    actors = [remote.remote(*args) for _ in range(pool.n_actors)]
    try:
        try:
            ray.get([actor.ready.remote() for actor in actors])
        except ray.exceptions.RayActorError as exc:
            raise ClusterError(f"A Ray actor could not load dictionary '{record.name}': {exc}") from exc
        workers = ActorPool(actors)
        n_tokens = 0
        for tokens, _ in workers.map_unordered(lambda a, job: a.encode.remote(*job), list(zip(groups, staged))):
            n_tokens += tokens
            bar.update(min(bar.total - bar.n, tokens))
        bar.update(bar.total - bar.n)
        n_buckets = -(-record.n_latents // config.bucket_width)
        jobs = [
            (staged, record.name, record.run, b, config.bucket_width, n_tokens,
             str(store.root / feature_part_path(record.name, b, generation)))
            for b in range(n_buckets)
        ]  # fmt: skip
        merged = list(workers.map(lambda a, job: a.merge.remote(*job), jobs))
    except ray.exceptions.RayTaskError as exc:
        raise exc.as_instanceof_cause() from None
    finally:
        for actor in actors:
            ray.kill(actor)
    return n_tokens, merged
