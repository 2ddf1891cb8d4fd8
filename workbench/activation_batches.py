"""Shuffled training batches from a store's shards, without loading the store into memory.

Each epoch visits the shards in a seeded random order, `shards_per_buffer` at a time. Each
buffer's rows (BOS positions dropped) are shuffled with a seed derived from
(seed, epoch, buffer), and cut into batches. The order is therefore a pure function of the
seed and the catalog: a resumed run skips to its step arithmetically, without reading the
shards it has passed, and then sees exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

from collections.abc import Iterator
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
    shards: list[tuple[ShardRecord, ShardRecord | None]]  # (input shard, output shard for transcoders)
    n_rows: int


class ActivationBatches:
    def __init__(
        self,
        store: Store,
        run: str,
        hook: str,
        batch_size: int,
        seed: int = 0,
        hook_out: str | None = None,
        shards_per_buffer: int = 4,
    ):
        self.store, self.run, self.hook, self.hook_out = store, run, hook, hook_out
        self.batch_size, self.seed, self.shards_per_buffer = batch_size, seed, shards_per_buffer
        with store.reader() as con:
            found = read_one(con, RunRecord, run=run)
            hooks = [point.hook for point in read_all(con, HookPointRecord, run=run)]
        if found is None:
            raise StoreError(f"No run '{run}' in the store. See `workbench store info {store.root}`.")
        for name in filter(None, (hook, hook_out)):
            if name not in hooks:
                raise StoreError(f"Run '{run}' has no hook '{name}'; it has: {', '.join(hooks)}. Harvest it first.")
        self.context_len, self.d_model = found.context_len, found.d_model
        inputs = store.shards(run, hook)
        outputs = {s.chunk: s for s in store.shards(run, hook_out)} if hook_out else {}
        if hook_out:
            inputs = [s for s in inputs if s.chunk in outputs]
        if not inputs:
            raise StoreError(f"Run '{run}' has no committed activations at '{hook}'. Harvest it first.")
        self.shards = [(s, outputs.get(s.chunk)) for s in inputs]

    def _rows_without_bos(self, record: ShardRecord) -> int:
        first, last = record.first_token, record.first_token + record.n_rows  # token ids [first, last)
        bos = (last - 1) // self.context_len - (first - 1) // self.context_len
        return record.n_rows - bos

    def _buffers(self, epoch: int) -> list[_Buffer]:
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.shards))
        groups = [order[i : i + self.shards_per_buffer] for i in range(0, len(order), self.shards_per_buffer)]
        return [
            _Buffer(
                epoch, b, [self.shards[i] for i in group], sum(self._rows_without_bos(self.shards[i][0]) for i in group)
            )
            for b, group in enumerate(groups)
        ]

    def batches_per_epoch(self) -> int:
        return sum(b.n_rows // self.batch_size for b in self._buffers(0))

    def _load(self, buffer: _Buffer) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys, ids = [], [], []
        for record_in, record_out in buffer.shards:
            token_ids, x = read_shard(self.store.root / record_in.path, record_in.sha256, record_in.n_rows)
            keep = ~is_bos_position(token_ids, self.context_len)
            xs.append(x[keep])
            ids.append(token_ids[keep])
            if record_out is not None:
                _, y = read_shard(self.store.root / record_out.path, record_out.sha256, record_out.n_rows)
                ys.append(y[keep])
        x = np.concatenate(xs)
        bad = np.argwhere(~np.isfinite(x))
        if len(bad):
            token_id = int(np.concatenate(ids)[bad[0][0]])
            raise StoreError(
                f"Non-finite activation in run '{self.run}' at hook '{self.hook}': token_id {token_id}, dim {bad[0][1]} "
                f"({len(bad)} values in this buffer). Training stopped. Inspect it with "
                f"`workbench sql STORE \"SELECT * FROM tokens WHERE run = '{self.run}' AND token_id = {token_id}\"` "
                "and re-harvest the run."
            )
        permutation = np.random.default_rng([self.seed, buffer.epoch, buffer.index]).permutation(len(x))
        x_t = torch.from_numpy(x[permutation])
        y_t = torch.from_numpy(np.concatenate(ys)[permutation]) if ys else x_t
        return x_t, y_t

    def iterate(self, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (input, target) batches forever, starting at global step `start_step`."""
        step, epoch = 0, 0
        while True:
            for buffer in self._buffers(epoch):
                n_batches = buffer.n_rows // self.batch_size
                if step + n_batches <= start_step:
                    step += n_batches  # skipped without reading
                    continue
                x, y = self._load(buffer)
                for b in range(n_batches):
                    if step >= start_step:
                        rows = slice(b * self.batch_size, (b + 1) * self.batch_size)
                        yield x[rows], y[rows]
                    step += 1
            epoch += 1
