"""Evaluation benchmarks on SmolLM2-135M at the demo's size, timed beside the forward passes they cannot avoid.

    python bench/evals.py [--store DIR] [--dict NAME] [--features 10]

Without --store it builds the demo's dictionary in a temporary store first (harvest 50k tokens at
blocks.6.hook_out, TopK k 32 with 2,304 latents on 400k tokens, encode), as `make demo` does.
- absorption: the whole command, beside a bare pass of the same prompts to the hook (the model's share);
- sparse probing: the whole command (all built-in tasks), beside a bare pass over the same chunks;
- autointerp: features per minute with the local explainer (SmolLM2-135M-Instruct), and its mean scores beside
  those of random explanations (0.5 is chance).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harvest import hardware  # noqa: E402

MODELS_DIR = Path(__file__).resolve().parent.parent / "store" / "models"


def demo_store(root: Path) -> None:
    from workbench.encode import EncodeConfig, run_encode
    from workbench.harvest import HarvestConfig, run_harvest
    from workbench.train import TrainConfig, run_train

    (root / "models").symlink_to(MODELS_DIR.resolve(), target_is_directory=True)
    MODELS_DIR.mkdir(parents=True, exist_ok=True)
    run_harvest(HarvestConfig(model="smollm2-135m", hooks=["blocks.6.hook_out"], store=str(root), tokens=50_000,
                              run="demo"), progress=False)  # fmt: skip
    run_train(TrainConfig(store=str(root), hook=["blocks.6.hook_out"], arch="topk", k=[32], latents=[2304],
                          tokens=400_000, batch_size=2048, run="demo", name="demo-topk"), progress=False)  # fmt: skip
    run_encode(EncodeConfig(store=str(root), dictionary="demo-topk"), progress=False)


def bare_pass(store, name: str, sequences: list[list[int]], batch_size: int) -> float:
    """Seconds for the forward passes alone (to the hook, batched as the benchmark batches them)."""
    from workbench.evals.common import LoadedDictionary

    loaded = LoadedDictionary.load(store, name, device="cpu")
    started = time.perf_counter()
    for _ in loaded.sequence_activations(sequences, batch_size):
        pass
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", help="a store holding --dict, encoded (default: build the demo's in a temp dir)")
    parser.add_argument("--dict", default="demo-topk")
    parser.add_argument("--features", type=int, default=10, help="features to explain")
    args = parser.parse_args()

    from workbench.evals.absorption import AbsorptionConfig, run_absorption
    from workbench.evals.autointerp import ExplainConfig, run_explain
    from workbench.evals.sparse_probing import ProbingConfig, run_sparse_probing
    from workbench.store import Store

    temporary = None
    if args.store is None:
        temporary = tempfile.TemporaryDirectory()
        root = Path(temporary.name) / "store"
        root.mkdir()
        print("building the demo's dictionary (harvest 50k tokens, train 400k, encode) ...", flush=True)
        demo_store(root)
        args.store = str(root)
    store = Store.open_existing(args.store)
    print(f"hardware: {hardware()}")

    started = time.perf_counter()
    absorption = run_absorption(AbsorptionConfig(store=args.store, dictionary=args.dict, device="cpu"))
    absorption_s = time.perf_counter() - started
    prompts = absorption_prompts(store, args.dict)
    bare_s = bare_pass(store, args.dict, prompts, AbsorptionConfig.batch_size)
    s = absorption.scores
    print(
        f"absorption: {absorption_s:.1f} s for {len(prompts)} words ({absorption_s / 60:.2f} min; budget 5 min); the "
        f"forward passes alone {bare_s:.1f} s, so {absorption_s / bare_s:.2f}x a bare pass. Rate {s.absorption_rate:.3f}, "
        f"full {s.full_absorption:.3f}, {s.split_features:.2f} split features, {s.n_letters} letters."
    )

    started = time.perf_counter()
    probing = run_sparse_probing(ProbingConfig(store=args.store, dictionary=args.dict, device="cpu"), progress=False)
    probing_s = time.perf_counter() - started
    chunks = probing_chunks(store, args.dict)
    bare_s = bare_pass(store, args.dict, chunks, ProbingConfig.batch_size)
    print(
        f"sparse probing: {probing_s:.1f} s for {len(probing.tasks)} tasks over {len(chunks)} chunks "
        f"({probing_s / 60:.2f} min; budget 5 min); the forward passes alone {bare_s:.1f} s, so "
        f"{probing_s / bare_s:.2f}x a bare pass. Mean test accuracy: dense {probing.dense:.3f}, "
        + ", ".join(f"top-{k} {a:.3f}" for k, a in probing.top_k.items())
    )

    started = time.perf_counter()
    explained = run_explain(
        ExplainConfig(store=args.store, dictionary=args.dict, n_features=args.features, device="cpu", seed=1),
        progress=False,
    )
    explain_s = time.perf_counter() - started
    n = len(explained.explained)
    summary = explained.summary
    print(
        f"autointerp: {n} features in {explain_s:.1f} s = {60 * n / explain_s:.1f} features/min with the local "
        f"SmolLM2-135M-Instruct explainer and scorer (model loading included). Mean detection "
        f"{summary['detection']:.3f} against {summary['detection_random']:.3f} for random explanations; fuzzing "
        f"{summary['fuzzing']:.3f} against {summary['fuzzing_random']:.3f} (0.5 is chance)."
    )
    for row in explained.explained[:5]:
        print(f"  feature {row.feature}: {row.explanation!r} (detection {row.detection:.2f})")
    if temporary is not None:
        temporary.cleanup()


def absorption_prompts(store, name: str) -> list[list[int]]:
    """The prompts absorption runs, rebuilt with its defaults (same seed, so the same words and examples)."""
    from workbench.evals.absorption import AbsorptionConfig, first_letter_prompts
    from workbench.evals.common import LoadedDictionary

    config = AbsorptionConfig(store=str(store.root), dictionary=name)
    loaded = LoadedDictionary.load(store, name, device="cpu")
    return first_letter_prompts(loaded.tokenizer, config.words, config.icl_examples, config.seed)[0]


def probing_chunks(store, name: str) -> list[list[int]]:
    from workbench.corpus import bos_token_id
    from workbench.evals.common import LoadedDictionary
    from workbench.evals.probing_tasks import BUILT_IN, built_in_tasks, chunk_pool
    from workbench.evals.sparse_probing import ProbingConfig

    config = ProbingConfig(store=str(store.root), dictionary=name)
    tokenizer = LoadedDictionary.load(store, name, device="cpu").tokenizer
    pool = chunk_pool(tokenizer, bos_token_id(tokenizer), config.chunk_tokens, config.examples // 2, config.seed)
    tasks = built_in_tasks(pool, tokenizer, list(BUILT_IN), config.examples // 2, config.seed)
    used = sorted({chunk for task in tasks for chunk, _ in task.positives + task.negatives})
    return [pool[i].ids for i in used]


if __name__ == "__main__":
    main()
