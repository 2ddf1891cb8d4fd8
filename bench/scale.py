"""The scale-out paths against their single-process form, on this machine: Ray harvest and torchrun training.

    python bench/scale.py                         # SmolLM2-135M layer 6, 32,768 tokens; TopK on them
    python bench/scale.py --model tiny --tokens 16384

Side by side in one run, each from a fresh store or name:
- harvest: `workbench harvest` in one process against `--ray --workers N` (a local Ray cluster of N CPU
  actors, each with cores / N threads), end to end as a user runs them (process start, model load, Ray's
  start-up included) and the chunk loop alone (`seconds_harvesting`);
- training: `workbench train` in one process against `torchrun --nproc-per-node N` (gloo), same global batch.
On a machine with as many cores as the single process already uses, the scale-out paths can only show their
overhead; on a cluster, each worker brings its own cores or GPU. Prints absolute times, the hardware and
the ratios; checks that the Ray harvest's shards equal the local ones byte for byte.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from harvest import hardware  # noqa: E402

WORKBENCH = [sys.executable, "-m", "workbench"]


def timed(command: list[str], **kwargs) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, **kwargs)
    if done.returncode:
        sys.exit(f"failed: {' '.join(command)}\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def digests(root: Path) -> dict[str, str]:
    folder = root / "shards" / "run=h"
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*.parquet")
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--hook", default="blocks.6.hook_out")
    parser.add_argument("--tokens", type=int, default=32768)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--models", default="store/models", help="where registry models are built (default: %(default)s)"
    )
    args = parser.parse_args()
    print(f"hardware: {hardware()}")
    folder = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    try:
        stores = {}
        for name in ("local", "ray"):
            stores[name] = folder / name
            stores[name].mkdir()
            Path(args.models).mkdir(parents=True, exist_ok=True)
            (stores[name] / "models").symlink_to(Path(args.models).resolve(), target_is_directory=True)
        harvest = [*WORKBENCH, "harvest", "--model", args.model, "--hooks", args.hook, "--tokens", str(args.tokens),
                   "--run", "h"]  # fmt: skip
        timed([*harvest, "--store", str(folder / "warm"), "--tokens", "512"])  # builds the model once, warms caches
        local = timed([*harvest, "--store", str(stores["local"])])
        ray = timed([*harvest, "--store", str(stores["ray"]), "--ray", "--workers", str(args.workers)])
        same = digests(stores["local"]) == digests(stores["ray"])
        print(f"harvest {args.tokens} tokens at {args.hook}, end to end: one process {local:.1f} s, "
              f"Ray {args.workers} workers {ray:.1f} s ({ray / local:.2f}x); shards byte-identical: {same}")  # fmt: skip

        train = [*WORKBENCH, "train", "--store", str(stores["local"]), "--hook", args.hook, "--k", "32",
                 "--latents", "4608", "--batch-size", "2048", "--tokens", str(20 * 2048)]  # fmt: skip
        one = timed([*train, "--name", "one"])
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(args.workers)]
        env = os.environ | {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // args.workers))}
        ddp = timed([*torchrun, "-m", "workbench", *train[3:], "--name", "ddp"], env=env)
        print(f"train TopK 4608 latents, 20 steps of 2048 tokens, end to end: one process {one:.1f} s, "
              f"torchrun {args.workers} processes {ddp:.1f} s ({ddp / one:.2f}x)")  # fmt: skip
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
