"""Dense activation shards: one Parquet file per (run, hook, chunk).

Format choice, measured on this 2-core machine with real SmolLM2 layer-6
residuals (4096 x 576 fp32): Parquet zstd-1 with BYTE_STREAM_SPLIT encoding and
no dictionary or statistics stores 0.85x the raw fp32 bytes, writes at ~235 MB/s
and reads back to numpy at ~535 MB/s. pyarrow's defaults (dictionary encoding on)
write the same data at 26 MB/s; rows in a DuckDB table insert at ~54 MB/s. An
.npy shard writes faster but no SQL engine reads it. See store/README.md.

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

from workbench.errors import CorruptShardError, StoreError

_WRITE_OPTIONS = dict(
    compression="zstd",
    compression_level=1,
    use_dictionary=False,
    write_statistics=False,
    column_encoding={"act.list.element": "BYTE_STREAM_SPLIT"},
)
_SPACE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


@dataclass(frozen=True)
class ShardInfo:
    n_rows: int
    n_bytes: int
    sha256: str


def encode_shard(token_ids: np.ndarray, acts: np.ndarray) -> pa.Buffer:
    """Serialize rows (token_id BIGINT, act FLOAT[d]) to Parquet, in memory (no copy of the activations)."""
    acts = np.ascontiguousarray(acts, dtype=np.float32)
    table = pa.table(
        {
            "token_id": pa.array(token_ids.astype(np.int64)),
            "act": pa.FixedSizeListArray.from_arrays(pa.array(acts.reshape(-1)), acts.shape[1]),
        }
    )
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, **_WRITE_OPTIONS)
    return sink.getvalue()


def write_shard(path: Path, token_ids: np.ndarray, acts: np.ndarray) -> ShardInfo:
    """Encode and write one shard.

    It goes to a temporary name, is fsynced, then renamed, so the final name never
    holds a partial file. The catalog registers it afterwards (see harvest.py).
    """
    payload = encode_shard(token_ids, acts)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    try:
        with open(partial, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, path)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        if exc.errno in _SPACE_ERRNOS:
            raise StoreError(
                f"No space left to write {path} ({exc.strerror}). Everything committed before this shard is intact; "
                "free some space and run the same command again to resume."
            ) from exc
        raise StoreError(f"Could not write shard {path}: {exc.strerror or exc}.") from exc
    return ShardInfo(n_rows=len(token_ids), n_bytes=payload.size, sha256=hashlib.sha256(memoryview(payload)).hexdigest())


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def read_shard(path: Path, expected_sha256: str, expected_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """(token_ids int64 [n], acts float32 [n, d]) after checking the file against its catalog checksum."""
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
