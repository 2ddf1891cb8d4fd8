"""Codebook bottlenecks against the plain model: forward-pass overhead and fine-tuning throughput, in one run.

    python bench/codebook.py [--model smollm2-135m] [--sites blocks.6.mlp.hook_out,blocks.6.attn.hook_out]
                             [--codes 1024] [--k 8] [--batch-size 8] [--context-len 128]

Forward: the same batch through the plain model and through the model with its bottlenecks,
alternating, median of --repeats each (no_grad, logits included). The plain arm is the same
model with its bottlenecks switched off: their hooks then only keep a reference to the site's
output, which costs nothing measurable.

Fine-tuning: --steps optimizer steps of plain LM fine-tuning (AdamW on every weight) against
the codebook loop (workbench.codebooks.finetune) with the model tuned too, and with the model
frozen (only the codebooks learn), each from a fresh optimizer after one untimed step of each
(the first backward pass allocates every gradient buffer); the plain arm runs before and after
the codebook arms and keeps its faster run. Reported as tokens per second.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harvest import hardware  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--sites", default="blocks.6.mlp.hook_out,blocks.6.attn.hook_out")
    parser.add_argument("--codes", type=int, default=1024)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--context-len", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5, help="forward passes per arm")
    parser.add_argument("--steps", type=int, default=4, help="fine-tuning steps per arm")
    parser.add_argument("--models-dir", default=str(Path(__file__).resolve().parent.parent / "store" / "models"))
    args = parser.parse_args()

    from workbench.codebooks.attach import CodebookModel
    from workbench.codebooks.finetune import FinetuneSettings, codebook_identity, finetune, model_fingerprint
    from workbench.corpus import tokenize_corpus
    from workbench.models import load_hf_model, resolve_model_dir

    hf_model, tokenizer = load_hf_model(resolve_model_dir(args.model, Path(args.models_dir)))
    n_tokens = (args.steps + 2) * args.batch_size * args.context_len
    contexts = torch.from_numpy(tokenize_corpus("default", tokenizer, n_tokens, args.context_len).contexts()).long()
    batch_at = lambda step: contexts[(step * args.batch_size) % len(contexts) :][: args.batch_size]  # noqa: E731
    sites = [s.strip() for s in args.sites.split(",") if s.strip()]
    coded = CodebookModel(hf_model, sites, args.codes, args.k)
    coded.kmeans_init(contexts[: max(2, -(-args.codes // args.context_len))], batch_size=args.batch_size)
    coded.eval()

    times = {True: [], False: []}
    with torch.no_grad():
        for enabled in (True, False):  # warm-up
            coded.enabled = enabled
            coded(batch_at(0))
        for _ in range(args.repeats):
            for enabled in (False, True):
                coded.enabled = enabled
                start = time.perf_counter()
                coded(batch_at(0))
                times[enabled].append(time.perf_counter() - start)
    coded.enabled = True
    plain_s, coded_s = statistics.median(times[False]), statistics.median(times[True])
    batch_tokens = args.batch_size * args.context_len

    def plain_finetune(steps: int) -> float:
        for param in hf_model.parameters():
            param.requires_grad_(True)
        coded.enabled = False
        hf_model.train()
        optimizer = torch.optim.AdamW(hf_model.parameters(), lr=3e-5, weight_decay=0.0)
        start = time.perf_counter()
        for step in range(steps):
            ids = batch_at(step)
            loss = hf_model(ids, labels=ids).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        elapsed = time.perf_counter() - start
        coded.enabled = True
        hf_model.eval()
        return elapsed

    def codebook_finetune(steps: int, model_lr: float) -> float:
        identity = codebook_identity(coded, model_fingerprint(hf_model))
        start = time.perf_counter()
        finetune(coded, batch_at, steps, FinetuneSettings(model_lr=model_lr), identity, progress=False)
        return time.perf_counter() - start

    # One untimed step of each first: the first backward pass pays for allocating every gradient buffer.
    plain_finetune(1)
    codebook_finetune(1, 3e-5)
    plain_train_s = plain_finetune(args.steps)
    coded_train_s = codebook_finetune(args.steps, 3e-5)
    frozen_train_s = codebook_finetune(args.steps, 0.0)
    plain_train_s = min(plain_train_s, plain_finetune(args.steps))  # again after the codebook arms, against drift
    rate = lambda seconds: args.steps * batch_tokens / seconds  # noqa: E731

    print(f"hardware: {hardware()}")
    print(
        f"model {args.model}; codebooks at {', '.join(sites)}: {args.codes} codes, k={args.k}; "
        f"batch {args.batch_size} x {args.context_len} tokens"
    )
    print(
        f"forward (median of {args.repeats}):   plain {plain_s * 1000:8.1f} ms   with codebooks {coded_s * 1000:8.1f} ms"
        f"   overhead {coded_s / plain_s:.3f}x"
    )
    print(
        f"fine-tuning ({args.steps} steps each): plain LM {rate(plain_train_s):8.0f} tok/s   "
        f"codebooks + model {rate(coded_train_s):8.0f} tok/s ({plain_train_s / coded_train_s:.2f}x the plain speed)   "
        f"codebooks, model frozen {rate(frozen_train_s):8.0f} tok/s ({plain_train_s / frozen_train_s:.2f}x the plain speed)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
