"""TopK SAE training: the workbench against SAELens, on the same activations, side by side.

    python bench/train_sae.py                    # SmolLM2-135M layer-6 residual, k 32, 4608 latents, batch 4096
    python bench/train_sae.py --steps 40 --latents 2304

Both trainers get the identical batches, already in memory (read once from a store harvested
here), the same k, width, batch size, learning rate (Adam, constant) and number of steps, and
their own defaults otherwise: ours scales inputs to a mean norm of sqrt(d) from the first
batch; SAELens's TopK is given normalize_activations="expected_average_only_in", its
equivalent. Timed: the whole fit, input-scale estimation included. Then both are measured
on the same held-out batches with one definition: FVU (DESIGN.md), L0, and the share of
latents that never fire on the held-out tokens.

Transcoders (--transcoders, MLP input -> MLP output of the same layer): our TopK transcoder
against sparsify's (eai-sparsify, `pip install eai-sparsify`). sparsify's Trainer drives a
model and a dataset itself, so its SparseCoder(transcode=True) is trained here in the loop
its Trainer runs (FVU + AuxK loss, decoder gradient projection, unit-norm decoder), with Adam
at the same learning rate instead of its default signum, so that only the coder differs.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the `workbench` CLI does; see workbench/cli/__init__.py
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from workbench.activation_batches import ActivationBatches
from workbench.dictionaries import DictionaryConfig, make_dictionary
from workbench.dictionaries.fit import fit
from workbench.harvest import HarvestConfig, run_harvest
from workbench.metrics import FVUAccumulator
from workbench.store import Store

sys.path.insert(0, str(Path(__file__).parent))
from harvest import hardware  # noqa: E402


def held_out_metrics(encode, decode, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> dict:
    """FVU of decode(encode(x)) against y, L0, and the share of latents that never fire, over (x, y) batches."""
    fvu, fired, l0_sum, n = FVUAccumulator(), None, 0.0, 0
    with torch.no_grad():
        for x, y in pairs:
            f = encode(x)
            fvu.add(y, decode(f))
            active = f != 0
            fired = active.any(0) if fired is None else fired | active.any(0)
            l0_sum += active.sum().item()
            n += x.shape[0]
    return {"fvu": fvu.value(), "l0": l0_sum / n, "dead": 1 - fired.float().mean().item()}


def train_ours(pairs, args, lr, transcoder: bool):
    """Our TopK SAE (pairs of (x, x)) or TopK transcoder (pairs of (input, output)), through workbench.dictionaries.fit.fit."""
    torch.manual_seed(args.seed)
    d_in, d_out = pairs[0][0].shape[1], pairs[0][1].shape[1]
    model = make_dictionary(
        DictionaryConfig(arch="topk", d_in=d_in, d_out=d_out, n_latents=args.latents, k=args.k, transcoder=transcoder)
    )
    start = time.perf_counter()
    state, _ = fit(
        model,
        lambda step: iter(pairs[step:]),
        args.steps,
        lr,
        dead_window_tokens=args.dead_window_steps * args.batch_size,
        progress=False,
    )
    seconds = time.perf_counter() - start
    model.eval()
    model.fold_scales(state.input_scale, state.target_scale)
    return seconds, model


def train_saelens(batches, args, lr):
    from sae_lens.config import SAETrainerConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.training.sae_trainer import SAETrainer

    torch.manual_seed(args.seed)
    sae = TopKTrainingSAE(
        TopKTrainingSAEConfig(
            d_in=batches[0].shape[1], d_sae=args.latents, k=args.k, normalize_activations="expected_average_only_in"
        )
    )
    config = SAETrainerConfig(
        total_training_samples=args.steps * args.batch_size,
        train_batch_size_samples=args.batch_size,
        lr=lr,
        lr_end=lr,
        dead_feature_window=args.dead_window_steps,
        n_batches_for_norm_estimate=1,
        feature_sampling_window=10**9,
    )
    provider = iter(batches[:1] + batches)  # the norm estimate takes one batch, as ours does
    trainer = SAETrainer(config, sae, provider)
    start = time.perf_counter()
    trainer.fit()
    seconds = time.perf_counter() - start
    return seconds, sae.eval()


def train_sparsify_transcoder(pairs, args, lr):
    from sparsify import SparseCoder, SparseCoderConfig

    torch.manual_seed(args.seed)
    coder = SparseCoder(
        pairs[0][0].shape[1], SparseCoderConfig(num_latents=args.latents, k=args.k, transcode=True), device="cpu"
    )
    optimizer = torch.optim.Adam(coder.parameters(), lr=lr)
    tokens_since_fired = torch.zeros(args.latents, dtype=torch.long)
    start = time.perf_counter()
    for x, y in pairs:
        output = coder(x, y, dead_mask=tokens_since_fired >= args.dead_window_steps * args.batch_size)
        loss = output.fvu + output.auxk_loss  # sparsify's default auxk_alpha is 0; ours is on, so theirs is too
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        coder.remove_gradient_parallel_to_decoder_directions()
        optimizer.step()
        coder.set_decoder_norm_to_unit_norm()
        tokens_since_fired += x.shape[0]
        tokens_since_fired[output.latent_indices.flatten().unique()] = 0
    seconds = time.perf_counter() - start

    def encode(x):
        acts, indices, _ = coder.encode(x)
        return torch.zeros(x.shape[0], args.latents).scatter_(-1, indices, acts)

    def decode(f):
        return f @ coder.W_dec + coder.b_dec

    return seconds, encode, decode


def report(rows, tokens) -> None:
    print(f"{'':10s} {'tokens/s':>10s} {'seconds':>8s} {'FVU':>8s} {'L0':>6s} {'dead':>6s}")
    for label, seconds, m in rows:
        print(
            f"{label:10s} {tokens / seconds:10,.0f} {seconds:8.1f} {m['fvu']:8.4f} {m['l0']:6.1f} {100 * m['dead']:5.1f}%"
        )
    (_, ours_s, ours_m), (theirs, theirs_s, theirs_m) = rows
    print(
        f"\nthroughput ratio (workbench / {theirs}): {theirs_s / ours_s:.2f}x; "
        f"FVU ratio: {ours_m['fvu'] / theirs_m['fvu']:.3f} (below 1 is better)\n"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--hook", default="blocks.6.hook_out")
    parser.add_argument(
        "--harvest-tokens", type=int, default=65536, help="tokens harvested for the batches (default: %(default)s)"
    )
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--latents", type=int, default=4608)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--eval-batches", type=int, default=2)
    parser.add_argument("--lr", type=float, help="default: our default, 2e-4 / sqrt(latents / 16384)")
    parser.add_argument("--dead-window-steps", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models-dir", default="store/models")
    parser.add_argument("--transcoders", action="store_true", help="also compare TopK transcoders with sparsify's")
    args = parser.parse_args()
    layer = args.hook.split(".")[1]
    mlp_in, mlp_out = f"blocks.{layer}.mlp.hook_in", f"blocks.{layer}.mlp.hook_out"
    hooks = [args.hook] + ([mlp_in, mlp_out] if args.transcoders else [])
    lr = args.lr or 2e-4 / (args.latents / 16384) ** 0.5

    root = Path(tempfile.mkdtemp(prefix="bench-train-"))
    try:
        os.symlink(Path(args.models_dir).resolve(), root / "models")
        run_harvest(
            HarvestConfig(model=args.model, hooks=hooks, store=str(root), tokens=args.harvest_tokens, run="bench"),
            progress=False,
        )
        store = Store.open_existing(root)
        data = ActivationBatches(store, "bench", [args.hook], args.batch_size, args.seed)
        stream = data.iterate(0)
        batches = [next(stream)[args.hook].float() for _ in range(args.steps)]
        held_out = [next(stream)[args.hook].float() for _ in range(args.eval_batches)]  # later in the shuffled epochs
        if args.transcoders:
            pair_stream = ActivationBatches(store, "bench", [mlp_in, mlp_out], args.batch_size, args.seed).iterate(0)
            pairs = []
            for _ in range(args.steps + args.eval_batches):
                batch = next(pair_stream)
                pairs.append((batch[mlp_in].float(), batch[mlp_out].float()))
    finally:
        shutil.rmtree(root, ignore_errors=True)

    print(f"hardware: {hardware()}")
    print(
        f"data: {args.model} {args.hook}, {args.harvest_tokens:,} harvested tokens (BOS left out) reshuffled into "
        f"{args.steps} batches of {args.batch_size}; held out: {args.eval_batches} later batches"
    )
    print(f"settings: TopK k={args.k}, {args.latents} latents, Adam lr {lr:.2e} constant, {args.steps} steps\n")

    ours_s, ours = train_ours([(b, b) for b in batches], args, lr, transcoder=False)
    theirs_s, theirs = train_saelens(batches, args, lr)
    tokens = args.steps * args.batch_size
    held_out = [(b, b) for b in held_out]
    print(f"SAEs on {args.hook}:")
    report(
        [
            ("workbench", ours_s, held_out_metrics(ours.encode, ours.decode, held_out)),
            ("SAELens", theirs_s, held_out_metrics(theirs.encode, theirs.decode, held_out)),
        ],
        tokens,
    )
    if args.transcoders:
        train_pairs, held_out_pairs = pairs[: args.steps], pairs[args.steps :]
        ours_s, ours = train_ours(train_pairs, args, lr, transcoder=True)
        theirs_s, encode, decode = train_sparsify_transcoder(train_pairs, args, lr)
        print(f"TopK transcoders {mlp_in} -> {mlp_out}:")
        report(
            [
                ("workbench", ours_s, held_out_metrics(ours.encode, ours.decode, held_out_pairs)),
                ("sparsify", theirs_s, held_out_metrics(encode, decode, held_out_pairs)),
            ],
            tokens,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
