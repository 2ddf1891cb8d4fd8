"""Ray for the batch-inference commands (harvest, encode): connect, size the actor pool, check the store is shared.

The pattern both commands follow: a pool of actors, each holding the model (or dictionary), computes whole
chunks and writes their Parquet files straight into the store's folder on a filesystem every node mounts;
the driver (the process the user started) is the only one that touches the catalog, committing one chunk
at a time exactly as a local run does. So the store's guarantees carry over unchanged: a file becomes
data only when the driver commits it; a chunk whose actor died is given to a new actor and rewrites the
same file names; a killed driver is resumed by running the command again. Ray is an optional dependency
(`pip install 'workbench[ray]'`); nothing imports it unless --ray is given.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from workbench.devices import Placement, resolve_dtype
from workbench.errors import WorkbenchError

LOCAL = "local"  # --ray without an address: start a cluster on this machine
RESTARTS_PER_ACTOR = 3  # a chunk whose actor died is retried on a new one, up to this many deaths per actor slot


class ClusterError(WorkbenchError):
    """A Ray cluster that cannot be used as asked: not installed, not answering, store not shared."""


def import_ray():
    try:
        import ray
    except ImportError as exc:
        raise ClusterError(
            "--ray needs Ray: pip install 'workbench[ray]' (on every node, with the same workbench version)."
        ) from exc
    return ray


@dataclass(frozen=True)
class Pool:
    """How many actors to start and what each reserves: one GPU each when the cluster has GPUs, else CPUs."""

    n_actors: int
    options: dict[str, Any]
    uses_gpus: bool

    def placement(self, device: str, dtype: str) -> Placement:
        """What each actor will resolve --device/--dtype to (the driver may have no GPU of its own)."""
        device = ("cuda" if self.uses_gpus else "cpu") if device == "auto" else device
        resolved = torch.device(device)
        return Placement(resolved, resolve_dtype(dtype, resolved, check_support=False))


def connect(address: str, workers: int | None, store: str | Path) -> Pool:
    """Join the cluster at `address` (or start one here, for LOCAL), then check that every node can write and
    read the store's folder. Raises ClusterError, having written nothing, when either fails."""
    if workers is not None and workers < 1:
        raise ClusterError(f"--workers must be at least 1 (got {workers}).")
    ray = import_ray()
    if not ray.is_initialized():
        if address == LOCAL:
            cpus = max(workers or 0, os.cpu_count() or 1)
            # address="local": a new cluster even when another one runs on this machine (ray.init() would join it).
            ray.init(
                address="local",
                num_cpus=cpus,
                include_dashboard=False,
                logging_level=logging.ERROR,
                log_to_driver=False,
            )
        else:
            _check_answers(address)
            ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
    check_shared_folder(Path(store))
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    if gpus:
        n = workers or gpus
        return Pool(n, {"num_gpus": gpus / n if n > gpus else 1}, True)
    n = workers or len([node for node in ray.nodes() if node["Alive"]])
    return Pool(n, {"num_cpus": max(1, int(resources.get("CPU", 1)) // n)}, False)


def _check_answers(address: str, timeout_s: float = 5.0) -> None:
    """A TCP connection to the head's port first: ray.init on a dead address retries for minutes."""
    if address == "auto":
        return
    host_port = address.removeprefix("ray://")
    host, _, port = host_port.rpartition(":")
    if not host or not port.isdigit():
        raise ClusterError(f"--ray {address}: give HOST:PORT (e.g. 10.0.0.5:6379), ray://HOST:PORT, or --ray alone.")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise ClusterError(
            f"No Ray cluster answers at {address} ({exc.strerror or exc}). Start one with `ray start --head` on "
            "the head node and give the address it prints, or give --ray alone to start one on this machine. "
            "Nothing was changed."
        ) from exc


def _probe(folder: str, nonce: str) -> tuple[str, str]:
    """On a node: read the driver's probe file, and write one back. Returns (hostname, what it found)."""
    host = socket.gethostname()
    try:
        found = (Path(folder) / f".probe-{nonce}").read_text()
        (Path(folder) / f".probe-{nonce}-{host}-{os.getpid()}").write_text(nonce)
    except OSError as exc:
        return host, f"error: {exc}"
    return host, found


def check_shared_folder(store: Path) -> None:
    """Every alive node writes and reads beside the store (in its nearest existing folder): a store the workers
    cannot see would otherwise fail chunk by chunk, or write shards the driver never finds."""
    ray = import_ray()
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    folder = next(p for p in (store, *store.resolve().parents) if p.is_dir())
    nonce = uuid.uuid4().hex
    probe = folder / f".probe-{nonce}"
    probe.write_text(nonce)
    try:
        remote = ray.remote(num_cpus=0)(_probe)
        nodes = [node["NodeID"] for node in ray.nodes() if node["Alive"]]
        answers = ray.get(
            [
                remote.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(
                    str(folder.resolve()), nonce
                )
                for node in nodes
            ]
        )
        replies = {p.name for p in folder.glob(f".probe-{nonce}-*")}
        for host, found in answers:
            if found != nonce or not any(name.startswith(f".probe-{nonce}-{host}-") for name in replies):
                raise ClusterError(
                    f"The Ray worker on {host} cannot share files with this machine at {folder.resolve()} "
                    f"({found if found != nonce else 'its file did not appear here'}). Put the store on a "
                    "filesystem every node mounts at the same path (NFS, Lustre, ...). Nothing was harvested."
                )
    finally:
        for file in folder.glob(f".probe-{nonce}*"):
            file.unlink(missing_ok=True)
