"""The GPU path, side by side in one run, on whatever device exists (a smaller run on a CPU, same table).

    python bench/gpu.py                                  # random:smollm2-135m, --device auto
    python bench/gpu.py --model smollm2-135m --device cpu --harvest-tokens 16384 --train-tokens 2M

Prints, with the hardware and the absolute numbers:
1. harvest against a bare forward pass of the same contexts, in the compute dtype (bf16 on cuda), shards in
   --store-dtype;
2. TopK training tokens/s: ours from the stored shards (`workbench train`'s path: prefetching reader,
   non-blocking copies, the step on the device) against SAELens's TopK trainer and sparsify's SparseCoder
   on the same batches held in device memory (which favours them: they read nothing), same width, k, batch
   and learning rate; then each one's FVU on the same held-out batches after the same tokens;
3. the share of our training loop's wall time spent waiting for data, and peak GPU memory.

`random:smollm2-135m` is SmolLM2-135M's shape with random weights (the GGUF is not needed): throughput does
not depend on the weights, but FVU does, so FVU figures from random weights compare trainers only.
4. streaming training (live activations, nothing stored) against training from the stored shards.
"""

from __future__ import annotations

import argparse
import dataclasses
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the `workbench` CLI does; see workbench/cli/__init__.py
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoTokenizer

from workbench.activation_batches import ActivationBatches
from workbench.corpus import tokenize_corpus
from workbench.devices import resolve_placement
from workbench.harvest import HarvestConfig, run_harvest
from workbench.models import load_hf_model, resolve_model_dir
from workbench.models.backends import bare_forward
from workbench.store import Store
from workbench.train import TrainConfig, run_train

sys.path.insert(0, str(Path(__file__).parent))
from harvest import hardware  # noqa: E402
from train_sae import held_out_metrics  # noqa: E402


def device_name(placement) -> str:
    if placement.device.type == "cuda":
        props = torch.cuda.get_device_properties(placement.device)
        return f"{props.name}, {props.total_memory / 2**30:.0f} GiB"
    return hardware()


def synchronize(placement) -> None:
    if placement.device.type == "cuda":
        torch.cuda.synchronize(placement.device)


def time_bare(hf_model, contexts: np.ndarray, batch_size: int, stop_layer: int, placement) -> float:
    synchronize(placement)
    start = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(contexts), batch_size):
            bare_forward(
                hf_model, torch.from_numpy(contexts[i : i + batch_size]).long().to(placement.device), stop_layer
            )
    synchronize(placement)
    return time.perf_counter() - start


def train_saelens(batches, held_out, args, lr, placement) -> tuple[float, dict]:
    from sae_lens.config import SAETrainerConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.training.sae_trainer import SAETrainer

    torch.manual_seed(args.seed)
    sae = TopKTrainingSAE(
        TopKTrainingSAEConfig(
            d_in=batches[0].shape[1],
            d_sae=args.latents,
            k=args.k,
            normalize_activations="expected_average_only_in",
            device=str(placement.device),
        )
    )
    config = SAETrainerConfig(
        total_training_samples=len(batches) * args.train_batch_size,
        train_batch_size_samples=args.train_batch_size,
        lr=lr,
        lr_end=lr,
        dead_feature_window=50,
        n_batches_for_norm_estimate=1,
        feature_sampling_window=10**9,
        device=str(placement.device),
    )
    trainer = SAETrainer(config, sae, iter(batches[:1] + batches))
    synchronize(placement)
    start = time.perf_counter()
    trainer.fit()
    synchronize(placement)
    seconds = time.perf_counter() - start
    sae.eval()
    return seconds, held_out_metrics(sae.encode, sae.decode, [(x, x) for x in held_out])


def train_sparsify(batches, held_out, args, lr, placement) -> tuple[float, dict] | None:
    try:
        from sparsify import SparseCoder, SparseCoderConfig
    except ImportError:
        return None
    torch.manual_seed(args.seed)
    coder = SparseCoder(
        batches[0].shape[1], SparseCoderConfig(num_latents=args.latents, k=args.k), device=placement.device
    )
    optimizer = torch.optim.Adam(coder.parameters(), lr=lr)
    since_fired = torch.zeros(args.latents, dtype=torch.long, device=placement.device)
    scale = batches[0].shape[1] ** 0.5 / batches[0].norm(dim=1).mean()  # the same input scaling as ours
    synchronize(placement)
    start = time.perf_counter()
    for x in batches:
        x = x * scale
        output = coder(x, dead_mask=since_fired >= 50 * args.train_batch_size)
        loss = output.fvu + output.auxk_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        coder.remove_gradient_parallel_to_decoder_directions()
        optimizer.step()
        coder.set_decoder_norm_to_unit_norm()
        since_fired += x.shape[0]
        since_fired[output.latent_indices.flatten()] = 0
    synchronize(placement)
    seconds = time.perf_counter() - start

    def encode(x):
        acts, indices, _ = coder.encode(x * scale)
        return torch.zeros(x.shape[0], args.latents, device=x.device).scatter_(-1, indices, acts)

    def decode(f):
        return (f @ coder.W_dec + coder.b_dec) / scale

    return seconds, held_out_metrics(encode, decode, [(x, x) for x in held_out])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="random:smollm2-135m")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--store-dtype", default="auto")
    parser.add_argument("--hook", default="blocks.6.hook_out")
    parser.add_argument("--harvest-tokens", type=int, help="default: 1M on cuda, 16384 on cpu")
    parser.add_argument("--train-tokens", type=int, help="default: 20M on cuda, 400k on cpu")
    parser.add_argument("--batch-size", type=int, help="contexts per harvest pass (default: 64 on cuda, 8 on cpu)")
    parser.add_argument("--train-batch-size", type=int, default=4096)
    parser.add_argument("--stream-train-tokens", type=int, help="default: --train-tokens on cuda, 40960 on cpu")
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--latents", type=int, default=4608)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models-dir", default="store/models")
    args = parser.parse_args()
    placement = resolve_placement(args.device, args.dtype)
    cuda = placement.device.type == "cuda"
    harvest_tokens = args.harvest_tokens or (1_000_000 if cuda else 16_384)
    train_tokens = args.train_tokens or (20_000_000 if cuda else 400_000)
    batch_size = args.batch_size or (64 if cuda else 8)
    model_dir = resolve_model_dir(args.model, Path(args.models_dir))
    root = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    try:
        (root / "models").symlink_to(Path(args.models_dir).resolve(), target_is_directory=True)
        # 1. Harvest against a bare pass over the same contexts (the harvest's own, read back from the store).
        config = HarvestConfig(
            model=args.model,
            hooks=[args.hook],
            store=str(root),
            tokens=harvest_tokens,
            run="bench",
            batch_size=batch_size,
            device=args.device,
            dtype=args.dtype,
            store_dtype=args.store_dtype,
        )
        # A first harvest warms up the hooking library (nnsight traces its first call); the timed one follows,
        # between two bare passes.
        run_harvest(dataclasses.replace(config, run="warm-up", tokens=2 * batch_size * 128), progress=False)
        hf_model, _ = load_hf_model(model_dir, placement)
        layer = int(args.hook.split(".")[1])
        warm = Store.open_existing(root).contexts("warm-up")
        time_bare(hf_model, warm, batch_size, layer, placement)  # warm-up
        # The bare passes run over the same contexts, tokenized the same way the harvest does.
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        contexts = tokenize_corpus("default", tokenizer, harvest_tokens, 128).contexts()
        bare_before = time_bare(hf_model, contexts, batch_size, layer, placement)
        harvested = run_harvest(config, progress=False)
        bare_after = time_bare(hf_model, contexts, batch_size, layer, placement)
        store = Store.open_existing(root)
        bare = (bare_before + bare_after) / 2
        del hf_model
        with store.reader() as con:
            stored_dtype = con.execute("SELECT dtype FROM hook_points WHERE run = 'bench'").fetchone()[0]
        n_bytes = sum(s.n_bytes for s in store.shards("bench", args.hook))

        # 2. Training: ours from the shards, through `workbench train`'s entry point.
        if cuda:
            torch.cuda.reset_peak_memory_stats(placement.device)
        lr = 2e-4 / (args.latents / 16384) ** 0.5
        settings = dict(
            store=str(root),
            hook=[args.hook],
            k=[args.k],
            latents=[args.latents],
            batch_size=args.train_batch_size,
            lr=lr,
            seed=args.seed,
            device=args.device,
            dtype=args.dtype,
            checkpoint_seconds=10**9,
        )
        started = time.perf_counter()
        trained = run_train(TrainConfig(**settings, run="bench", tokens=train_tokens), progress=False)
        ours_s = time.perf_counter() - started
        peak = torch.cuda.max_memory_allocated(placement.device) / 2**30 if cuda else float("nan")
        from workbench.dictionaries import load_dictionary

        ours_model = load_dictionary(root / trained.dictionary.path).to(placement.device).eval()
        n_steps = train_tokens // args.train_batch_size
        stream = ActivationBatches(store, "bench", [args.hook], args.train_batch_size, args.seed).iterate(0)
        batches = [next(stream)[args.hook].to(placement.device).float() for _ in range(n_steps)]
        held_out = batches[-2:]  # the last batches of the same stream: seen by every trainer alike
        ours_metrics = held_out_metrics(ours_model.encode, ours_model.decode, [(x, x) for x in held_out])
        saelens_s, saelens_metrics = train_saelens(batches, held_out, args, lr, placement)
        sparsify = train_sparsify(batches, held_out, args, lr, placement)
        # 4. Streaming: the same dictionary trained on live activations of the model (a shorter run on a CPU).
        stream_tokens = args.stream_train_tokens or (train_tokens if cuda else 40_960)
        started = time.perf_counter()
        streamed = run_train(
            TrainConfig(
                **settings, tokens=stream_tokens, model=args.model, name="streamed", stream_tokens=harvest_tokens
            ),
            progress=False,
        )
        stream_s = time.perf_counter() - started
    finally:
        shutil.rmtree(root, ignore_errors=True)

    tokens = n_steps * args.train_batch_size
    print(f"date: {time.strftime('%Y-%m-%d')}; device: {placement.describe()}; {device_name(placement)}")
    print(
        f"model: {args.model} ({'random weights' if args.model.startswith('random:') else 'pretrained'}), {args.hook}"
    )
    print(
        f"\n1. harvest {harvested.n_tokens:,} tokens, shards in {stored_dtype} ({n_bytes / 2**20:.1f} MiB): "
        f"{harvested.seconds_harvesting:.2f} s against a bare forward pass of {bare:.2f} s "
        f"({bare_before:.2f} s before, {bare_after:.2f} s after) -> "
        f"{harvested.seconds_harvesting / bare:.3f}x (target <= 1.05x on a GPU)"
    )
    print(f"\n2. TopK training, {tokens:,} tokens, batch {args.train_batch_size}, k {args.k}, {args.latents} latents:")
    print(f"{'':28s} {'tokens/s':>12s} {'seconds':>8s} {'FVU':>8s} {'L0':>6s} {'dead':>6s}")
    rows = [
        ("workbench (from shards)", ours_s, ours_metrics),
        ("SAELens (batches in memory)", saelens_s, saelens_metrics),
    ]
    if sparsify is not None:
        rows.append(("sparsify (batches in memory)", *sparsify))
    for label, seconds, m in rows:
        print(
            f"{label:28s} {tokens / seconds:12,.0f} {seconds:8.1f} {m['fvu']:8.4f} {m['l0']:6.1f} {100 * m['dead']:5.1f}%"
        )
    print(f"   throughput ratio, workbench / SAELens: {saelens_s / ours_s:.2f}x (target >= 3x)")
    if sparsify is not None:
        print(f"   throughput ratio, workbench / sparsify: {sparsify[0] / ours_s:.2f}x (target >= 1.0x)")
    else:
        print("   sparsify: not installed (pip install eai-sparsify) - no ratio")
    print(
        f"\n3. our loop waited for data {100 * (trained.data_wait_share or 0):.1f}% of its wall time (target < 10%); "
        f"peak GPU memory: {'n/a (cpu)' if not cuda else f'{peak:.2f} GiB'}"
    )
    stream_rate = streamed.dictionary.tokens_done / stream_s
    print(
        f"4. streaming training (forward pass + training, {streamed.dictionary.tokens_done:,} tokens): "
        f"{stream_rate:,.0f} tokens/s against {tokens / ours_s:,.0f} from stored shards "
        f"({stream_rate / (tokens / ours_s):.2f}x)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
