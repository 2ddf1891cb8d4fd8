"""Dense activation shards: one Parquet file per (run, hook, chunk).

Format choice, measured on this 2-core machine with real SmolLM2 layer-6
residuals (4096 x 576 fp32): Parquet zstd-1 with BYTE_STREAM_SPLIT encoding and
no dictionary or statistics stores 0.85x the raw fp32 bytes, writes at ~235 MB/s
and reads back to numpy at ~535 MB/s. pyarrow's defaults (dictionary encoding on)
write the same data at 26 MB/s; rows in a DuckDB table insert at ~54 MB/s. An
.npy shard writes faster but no SQL engine reads it. See store/README.md.

Precision (`workbench harvest --store-dtype`), measured on 8192 x 576 activations here:
- float32: the model's values (in fp32).
- bfloat16: the values rounded to bfloat16 and stored as Parquet FLOAT. The two low bytes of every
  value are then zero, and BYTE_STREAM_SPLIT + zstd stores those byte streams almost free: 0.42x the
  fp32 bytes, written 2.3x and read 3.4x faster, and every reader (DuckDB, Polars, Ray Data, pandas)
  sees plain FLOAT, because Parquet has no bfloat16 type.
- float16: Parquet's FLOAT16 (halffloat) type, plain pages (DuckDB cannot read BYTE_STREAM_SPLIT on
  FLOAT16): 0.55x the bytes, read ~3x faster, read back as float16 (ActivationBatches moves it to the
  GPU at half the bytes). DuckDB reads it as FLOAT.
  Values beyond +-65504 do not fit: the harvest refuses them and suggests bfloat16.

Each shard's SHA-256 is recorded in the catalog when it is committed, so a
truncated or corrupted file is caught before its numbers are used.
"""

from __future__ import annotations

import errno
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from workbench.errors import CorruptShardError, StoreError

STORE_DTYPES = ("float32", "bfloat16", "float16")
_FLOAT16_MAX = 65504.0


def to_store_dtype(acts: torch.Tensor, store_dtype: str) -> np.ndarray:
    """A [rows, d] activation tensor (any device, any float dtype) as the numpy array a shard stores.

    The rounding happens on the tensor's device, so a GPU harvest moves half-precision bytes to the host.
    """
    if store_dtype == "float32":
        return acts.float().cpu().numpy()
    if store_dtype == "bfloat16":
        return acts.to(torch.bfloat16).cpu().float().numpy()  # bf16 values, exactly representable in fp32
    if store_dtype == "float16":
        largest = float(acts.detach().abs().max()) if acts.numel() else 0.0
        if largest > _FLOAT16_MAX:
            raise StoreError(
                f"An activation of magnitude {largest:.4g} does not fit in float16 (largest: 65504); nothing of this "
                "chunk was stored. Harvest into a new --run with --store-dtype bfloat16 (fp32's range) or float32."
            )
        return acts.to(torch.float16).cpu().numpy()
    raise StoreError(f"Unknown --store-dtype '{store_dtype}'; use one of {', '.join(STORE_DTYPES)}.")

_WRITE_OPTIONS = dict(
    compression="zstd",
    compression_level=1,
    use_dictionary=False,
    write_statistics=False,
    column_encoding={"act.list.element": "BYTE_STREAM_SPLIT"},
)
# DuckDB (2.0) reads BYTE_STREAM_SPLIT only for FLOAT, DOUBLE and the integers, not FLOAT16: plain pages.
_FLOAT16_WRITE_OPTIONS = {key: value for key, value in _WRITE_OPTIONS.items() if key != "column_encoding"}
_SPACE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


@dataclass(frozen=True)
class ShardInfo:
    n_rows: int
    n_bytes: int
    sha256: str


class ShardBuilder:
    """Builds one shard a batch at a time, one Parquet row group per batch, into a reused buffer.

    Encoding each batch right after the forward pass, while its activations are still in
    cache, costs about half as much as encoding the whole chunk later (measured on
    SmolLM2 layer-6 harvests here), and reusing the output buffer avoids page faults
    on fresh memory for every shard.
    """

    def __init__(self) -> None:
        self._scratch: pa.Buffer | None = None
        self._sink: pa.FixedSizeBufferWriter | None = None
        self._writer: pq.ParquetWriter | None = None
        self._rows = 0

    def start(self, expected_bytes: int) -> None:
        needed = expected_bytes + expected_bytes // 8 + (1 << 20)  # Parquet adds ~1% on incompressible data
        if self._scratch is None or self._scratch.size < needed:
            self._scratch = pa.allocate_buffer(needed)
        self._sink = pa.FixedSizeBufferWriter(self._scratch)
        self._writer, self._rows = None, 0

    def append(self, token_ids: np.ndarray, acts: np.ndarray) -> None:
        """Add rows (token_id BIGINT, act FLOAT[d] or FLOAT16[d]: the array's own dtype, see to_store_dtype)."""
        acts = np.ascontiguousarray(acts, dtype=np.float16 if acts.dtype == np.float16 else np.float32)
        table = pa.table(
            {
                "token_id": pa.array(token_ids.astype(np.int64, copy=False)),
                "act": pa.FixedSizeListArray.from_arrays(pa.array(acts.reshape(-1)), acts.shape[1]),
            }
        )
        if self._writer is None:
            options = _WRITE_OPTIONS if acts.dtype == np.float32 else _FLOAT16_WRITE_OPTIONS
            self._writer = pq.ParquetWriter(self._sink, table.schema, **options)
        self._writer.write_table(table)
        self._rows += len(token_ids)

    def finish(self, path: Path) -> ShardInfo:
        """Write the shard under its final name (via a temporary name and a rename).

        It is not yet durable or visible: `sync_files` makes it durable and the harvest then
        registers it in the catalog. A file that is never registered is an orphan, which the
        next harvest of the run deletes.
        """
        # finish() follows start() and at least one append(), which set these
        assert self._writer is not None and self._sink is not None and self._scratch is not None
        self._writer.close()
        payload = memoryview(self._scratch)[: self._sink.tell()]
        partial = path.with_name(path.name + ".partial")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(partial, "wb") as handle:
                handle.write(payload)
            os.replace(partial, path)
        except OSError as exc:
            partial.unlink(missing_ok=True)
            raise _write_error(path, exc) from exc
        return ShardInfo(n_rows=self._rows, n_bytes=len(payload), sha256=hashlib.sha256(payload).hexdigest())


def sync_files(paths: list[Path]) -> None:
    """fsync shard files and their folders, so a committed shard survives a power loss, not only a kill.

    Then drop the files' pages from the page cache: a harvest streams far more than
    memory holds, and writing into recycled pages is ~10x faster on this VM than
    growing the cache into untouched memory (16 MB: 0.004 s against 0.041 s).
    """
    try:
        for path in paths:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
                if hasattr(os, "posix_fadvise"):
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
        for folder in {p.parent for p in paths}:
            fd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    except OSError as exc:
        raise _write_error(paths[0], exc) from exc


def _write_error(path: Path, exc: OSError) -> StoreError:
    if exc.errno in _SPACE_ERRNOS:
        return StoreError(
            f"No space left to write {path} ({exc.strerror}). Everything committed before this shard is intact; "
            "free some space and run the same command again to resume."
        )
    return StoreError(f"Could not write shard {path}: {exc.strerror or exc}.")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def read_shard(path: Path, expected_sha256: str, expected_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """(token_ids int64 [n], acts [n, d]) after checking the file against its catalog checksum.

    acts are float32, or float16 for a float16 shard (call .astype(np.float32) where fp32 is needed).
    """
    try:
        payload = path.read_bytes()
    except FileNotFoundError as exc:
        raise CorruptShardError(f"Shard {path} is missing. {_REPAIR_HINT}") from exc
    if hashlib.sha256(payload).hexdigest() != expected_sha256:
        raise CorruptShardError(f"Shard {path} does not match its recorded SHA-256 (truncated or corrupted). {_REPAIR_HINT}")
    table = pq.read_table(pa.BufferReader(payload))
    if table.num_rows != expected_rows:
        raise CorruptShardError(f"Shard {path} has {table.num_rows} rows, the catalog says {expected_rows}. {_REPAIR_HINT}")
    acts = table.column("act").combine_chunks()
    d = acts.type.list_size
    return table.column("token_id").to_numpy(), acts.values.to_numpy().reshape(-1, d)


_REPAIR_HINT = (
    "Run `workbench store verify STORE --drop-corrupt` to unregister the damaged chunks, then re-run the harvest "
    "command with the same --run to regenerate them; other shards are untouched."
)
