"""The whole SmolLM2 depth analysis against the same number of bare forward passes.

    python bench/probes.py                    # 4,096 tokens; logit lens on 2,048; layer skipping on 1,024
    python bench/probes.py --model tiny

The depth probe makes one clean pass per batch (every block's input, attention output,
MLP output and output, plus logits) and one extra pass per skipped layer on the skip
batches. The baseline runs exactly that many plain HF forward passes (with logits) on
the same batches; skip passes now start at the skipped layer, so they cost less than the
full passes the baseline counts. The first ratio is what the probes' hooks, interventions
and measurements (logit lens unembeddings, KL over the vocabulary) cost on top of the
forward passes. The logit lens needs one final norm and unembedding per layer and token,
which for a large vocabulary (Gemma 3's 262k) is more arithmetic than the passes: the second
ratio adds those, timed bare, to the baseline.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the `workbench` CLI does

import torch

from workbench.corpus import tokenize_corpus
from workbench.models import load_hf_model, model_shape, resolve_model_dir
from workbench.probes.depth import DepthProbeConfig, run_depth_probes
from workbench.probes.logit_lens import final_norm_and_unembed

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harvest import hardware  # noqa: E402  (one hardware description for every benchmark)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--lens-tokens", type=int, default=2048)
    parser.add_argument("--skip-tokens", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--models-dir", default="store/models")
    args = parser.parse_args()

    model_dir = resolve_model_dir(args.model, Path(args.models_dir))
    n_layers, _ = model_shape(model_dir)
    hf_model, tokenizer = load_hf_model(model_dir)
    contexts = torch.from_numpy(tokenize_corpus("default", tokenizer, args.tokens).contexts()).long()
    batches = [contexts[i : i + args.batch_size] for i in range(0, len(contexts), args.batch_size)]
    skip_batches = min(len(batches), -(-args.skip_tokens // (args.batch_size * contexts.shape[1])))
    schedule = batches + [b for b in batches[:skip_batches] for _ in range(n_layers)]
    with torch.no_grad():
        hf_model(batches[0])  # warm-up

    def bare() -> float:
        start = time.perf_counter()
        with torch.no_grad():
            for batch in schedule:
                hf_model(batch)
        return time.perf_counter() - start

    # The logit lens needs one final norm and unembedding per layer of every lens token, whatever computes it:
    # timed bare too, on residual-sized inputs, so the second ratio counts all the model arithmetic the probes need.
    lens_batches = min(len(batches), -(-args.lens_tokens // (args.batch_size * contexts.shape[1])))
    norm, unembed = final_norm_and_unembed(hf_model)
    residual = torch.randn(args.batch_size, contexts.shape[1] - 1, hf_model.config.hidden_size)

    def bare_lens() -> float:
        start = time.perf_counter()
        with torch.no_grad():
            for _ in range(lens_batches * n_layers):
                unembed(norm(residual))
        return time.perf_counter() - start

    bare_before = bare()
    lens_before = bare_lens()
    root = Path(tempfile.mkdtemp(prefix="bench-probes-"))
    try:
        os.symlink(Path(args.models_dir).resolve(), root / "models")
        start = time.perf_counter()
        run_depth_probes(
            DepthProbeConfig(
                model=args.model,
                store=str(root),
                tokens=args.tokens,
                batch_size=args.batch_size,
                lens_tokens=args.lens_tokens,
                skip_tokens=args.skip_tokens,
            ),
            progress=False,
        )
        probe = time.perf_counter() - start
    finally:
        shutil.rmtree(root, ignore_errors=True)
    bare_after = bare()
    lens_after = bare_lens()
    bare_time = (bare_before + bare_after) / 2
    lens_time = (lens_before + lens_after) / 2

    print(f"hardware: {hardware()}; OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}")
    print(
        f"model {args.model} ({n_layers} layers); {contexts.numel()} tokens, logit lens on {args.lens_tokens}, "
        f"skipping every layer on {args.skip_tokens}"
    )
    print(
        f"forward passes       {len(schedule)} ({len(batches)} clean + {skip_batches} x {n_layers} skip) of "
        f"{args.batch_size}x{contexts.shape[1]} tokens"
    )
    print(f"bare forward passes  {bare_time:8.1f}s  ({bare_before:.1f}s before, {bare_after:.1f}s after)")
    print(f"depth probes         {probe:8.1f}s  (model load, tokenizing and storing included)")
    print(f"probes / bare        {probe / bare_time:8.2f}x  (the forward passes alone)")
    print(
        f"bare lens unembeddings {lens_time:6.1f}s  ({lens_batches} x {n_layers} final norms and unembeddings of "
        f"{args.batch_size}x{contexts.shape[1] - 1} tokens; {lens_before:.1f}s before, {lens_after:.1f}s after)"
    )
    print(f"probes / (bare + lens) {probe / (bare_time + lens_time):6.2f}x  (all the model arithmetic the probes need)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
