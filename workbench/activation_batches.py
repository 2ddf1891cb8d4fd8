"""Shuffled training batches from a store's shards, without loading the store into memory.

Each epoch visits the shards in a seeded random order, `shards_per_buffer` at a time. Each
buffer's rows (BOS positions dropped) are shuffled with a seed derived from
(seed, epoch, buffer), and cut into batches. The order is therefore a pure function of the
seed and the catalog: a resumed run skips to its step arithmetically, without reading the
shards it has passed, and then sees exactly the batches an uninterrupted run would.

Several hooks of one run are read together (grouped training, transcoders): their shards of the
same chunks form each buffer, and one permutation orders all of them, so the batches of a hook
are the same whether it is read alone or with others.

Keeping an accelerator fed: the next buffer is read and decoded on a background thread while the
current one is cut into batches (`prefetch`), its shards in parallel (pyarrow's decoding releases
the GIL); on CUDA it lands in pinned memory, so `.to(device, non_blocking=True)` overlaps the copy
with the device's work. float16 shards stay float16 until they reach the device.

Data-parallel training (torchrun): `rank` of `world_size` processes gathers only its own consecutive
slice of each global batch (batch_size / world_size rows), so the ranks' slices, in rank order, are
exactly the batch one process would see.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from workbench.corpus import is_bos_position
from workbench.errors import StoreError
from workbench.store import Store
from workbench.store.records import HookPointRecord, RunRecord, ShardRecord, read_all, read_one
from workbench.store.shards import read_shard


@dataclass
class _Buffer:
    epoch: int
    index: int
    chunks: list[list[ShardRecord]]  # per chunk of the buffer: its shard at each hook, in hook order
    n_rows: int


class ActivationBatches:
    """Batches of activations at `hooks` of one run: `iterate()` yields {hook: tensor [batch, d]} dicts."""

    def __init__(
        self,
        store: Store,
        run: str,
        hooks: Sequence[str],
        batch_size: int,
        seed: int = 0,
        shards_per_buffer: int = 4,
        prefetch: bool = True,
        pin_memory: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ):
        if batch_size % world_size:
            raise StoreError(
                f"--batch-size {batch_size} does not split evenly over {world_size} processes; "
                f"give a multiple of {world_size}."
            )
        self.rank, self.world_size = rank, world_size
        self.store, self.run, self.hooks = store, run, list(dict.fromkeys(hooks))
        self.batch_size, self.seed, self.shards_per_buffer = batch_size, seed, shards_per_buffer
        self.prefetch, self.pin_memory = prefetch, pin_memory
        with store.reader() as con:
            found = read_one(con, RunRecord, run=run)
            stored = [point.hook for point in read_all(con, HookPointRecord, run=run)]
        if found is None:
            raise StoreError(f"No run '{run}' in the store. See `workbench store info {store.root}`.")
        for name in self.hooks:
            if name not in stored:
                raise StoreError(f"Run '{run}' has no hook '{name}'; it has: {', '.join(stored)}. Harvest it first.")
        self.context_len, self.d_model = found.context_len, found.d_model
        by_hook = [{s.chunk: s for s in store.shards(run, hook)} for hook in self.hooks]
        chunks = sorted(set.intersection(*(set(shards) for shards in by_hook)))  # committed at every hook
        if not chunks:
            raise StoreError(f"Run '{run}' has no committed activations at {', '.join(self.hooks)}. Harvest it first.")
        self.chunks = [[shards[c] for shards in by_hook] for c in chunks]
        largest = max(buffer.n_rows for buffer in self._buffers(0))
        if largest < batch_size:  # no epoch would ever yield a batch
            raise StoreError(
                f"--batch-size {batch_size} is larger than the {largest} rows that one buffer of run '{run}' holds "
                f"({shards_per_buffer} shards of at most {self.chunks[0][0].n_rows} rows), so no batch could ever "
                "be drawn. Lower --batch-size or harvest more tokens."
            )

    def _rows_without_bos(self, record: ShardRecord) -> int:
        first, last = record.first_token, record.first_token + record.n_rows  # token ids [first, last)
        bos = (last - 1) // self.context_len - (first - 1) // self.context_len
        return record.n_rows - bos

    def _buffers(self, epoch: int) -> list[_Buffer]:
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.chunks))
        groups = [order[i : i + self.shards_per_buffer] for i in range(0, len(order), self.shards_per_buffer)]
        return [
            _Buffer(
                epoch,
                b,
                [self.chunks[i] for i in group],
                sum(self._rows_without_bos(self.chunks[i][0]) for i in group),
            )
            for b, group in enumerate(groups)
        ]

    def batches_per_epoch(self) -> int:
        return sum(b.n_rows // self.batch_size for b in self._buffers(0))

    def _read(self, record: ShardRecord) -> tuple[np.ndarray, np.ndarray]:
        return read_shard(self.store.root / record.path, record.sha256, record.n_rows)

    def _load(self, buffer: _Buffer, pool: ThreadPoolExecutor | None) -> dict[str, torch.Tensor]:
        records = [record for chunk in buffer.chunks for record in chunk]
        read = list(pool.map(self._read, records)) if pool else [self._read(r) for r in records]
        n_hooks = len(self.hooks)
        token_ids = np.concatenate([ids for ids, _ in read[::n_hooks]])  # the same rows at every hook
        kept = np.flatnonzero(~is_bos_position(token_ids, self.context_len))
        # Rows in their shuffled order, BOS left out; one gather per hook (below) does both, straight from the
        # concatenated shards (into pinned memory for CUDA): two copies of the data instead of four.
        order = kept[np.random.default_rng([self.seed, buffer.epoch, buffer.index]).permutation(len(kept))]
        if self.world_size > 1:  # this rank's slice of every batch of the buffer
            n_batches, share = len(order) // self.batch_size, self.batch_size // self.world_size
            order = order[: n_batches * self.batch_size].reshape(n_batches, self.world_size, share)[:, self.rank]
            order = order.reshape(-1)
        loaded: dict[str, torch.Tensor] = {}
        for h, hook in enumerate(self.hooks):
            everything = np.concatenate([acts for _, acts in read[h::n_hooks]])
            tensor = torch.empty((len(order), everything.shape[1]), dtype=torch.from_numpy(everything[:0]).dtype)
            if self.pin_memory:
                tensor = tensor.pin_memory()
            np.take(everything, order, axis=0, out=tensor.numpy())
            if not np.isfinite(tensor.numpy()).all():
                self._raise_non_finite(hook, tensor.numpy(), token_ids[order])
            loaded[hook] = tensor
        return loaded

    def _raise_non_finite(self, hook: str, x: np.ndarray, token_ids: np.ndarray) -> None:
        bad = np.argwhere(~np.isfinite(x))
        token_id = int(token_ids[bad[0][0]])
        raise StoreError(
            f"Non-finite activation in run '{self.run}' at hook '{hook}': token_id {token_id}, dim {bad[0][1]} "
            f"({len(bad)} values in this buffer). Training stopped. Inspect it with "
            f"`workbench sql STORE \"SELECT * FROM tokens WHERE run = '{self.run}' AND token_id = {token_id}\"` "
            "and re-harvest the run."
        )

    def _plan(self, start_step: int) -> Iterator[tuple[_Buffer, int]]:
        """(buffer, first batch to yield from it) from global step `start_step` on; passed buffers are skipped."""
        step, epoch = 0, 0
        while True:
            for buffer in self._buffers(epoch):
                n_batches = buffer.n_rows // self.batch_size
                if step + n_batches > start_step:
                    yield buffer, max(0, start_step - step)
                step += n_batches
            epoch += 1

    def iterate(self, start_step: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        """Yield {hook: batch} dicts forever, starting at global step `start_step`."""
        plan = self._plan(start_step)
        if not self.prefetch:
            for buffer, skip in plan:
                yield from self._batches(self._load(buffer, None), buffer, skip)
            return
        # One buffer ahead: the next is read and decoded (its shards in parallel) while this one is consumed.
        # `ahead` is left first, so its load never submits to a closed decoding pool.
        workers = min(4, len(self.hooks) * self.shards_per_buffer)
        with (
            ThreadPoolExecutor(workers, thread_name_prefix="shard-decode") as decode,
            ThreadPoolExecutor(1, thread_name_prefix="buffer-ahead") as ahead,
        ):
            buffer, skip = next(plan)
            upcoming = ahead.submit(self._load, buffer, decode)
            for following, following_skip in plan:
                data = upcoming.result()
                upcoming = ahead.submit(self._load, following, decode)
                yield from self._batches(data, buffer, skip)
                buffer, skip = following, following_skip

    def _batches(self, data: dict[str, torch.Tensor], buffer: _Buffer, skip: int) -> Iterator[dict[str, torch.Tensor]]:
        share = self.batch_size // self.world_size  # the whole batch in one process
        for b in range(skip, buffer.n_rows // self.batch_size):
            rows = slice(b * share, (b + 1) * share)
            yield {hook: tensor[rows] for hook, tensor in data.items()}
