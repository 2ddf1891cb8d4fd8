"""Codebook features on TokFSM: do discrete codes recover a finite-state machine's hidden states?

Reproduces the TokFSM experiment of Tamkin, Taufeeque & Goodman ("Codebook Features"), scaled down
for a CPU: 20 states of 2 digits with 3 transitions each (the paper: 100 states of 3 digits), a
2-layer d_model-64 Llama (the paper: 4 layers), 64 codes per site with k=1, codebooks at both
attention and both MLP outputs. Steps:
  1. train the model on walks of the machine;
  2. attach codebooks, k-means-initialise them, and fine-tune with them in place;
  3. next-state accuracy and LM loss: plain model, k-means codes only, fine-tuned with codes;
  4. purity of each site's codes for the true current state, against chance;
  5. interventions: at state A's last digit, force the codes of a random state B (per layer, at the
     attention or MLP sites, at all sites; and at all sites on both of A's digits) and measure the
     predicted mass on B's and A's successors, the JS divergence to B's transitions, and how often a
     sampled next state is one of B's successors.

    python analyses/codebook_fsm.py                       # about 1.5 minutes on 2 CPU cores
    python analyses/codebook_fsm.py --states 30 --codes 128 --finetune-steps 600

Prints the tables and saves purity.png and interventions.png under --out.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from workbench.codebooks.attach import CodebookModel  # noqa: E402
from workbench.codebooks.finetune import FinetuneSettings, codebook_identity, finetune, mean_lm_loss, model_fingerprint  # noqa: E402
from workbench.codebooks.fsm import TokFSM, next_state_accuracy, tiny_transformer, train_on_fsm  # noqa: E402
from workbench.codebooks.fsm_eval import chance_purity, intervene, site_purities, state_codes  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--states", type=int, default=20)
    parser.add_argument("--transitions", type=int, default=3)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--codes", type=int, default=64, help="codes per site")
    parser.add_argument("--k", type=int, default=1)
    parser.add_argument("--train-steps", type=int, default=300, help="training the plain model")
    parser.add_argument("--finetune-steps", type=int, default=300, help="fine-tuning with the codebooks in place")
    parser.add_argument("--model-lr", type=float, default=3e-5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="analyses/output/codebook_fsm")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    fsm = TokFSM.random(args.states, args.transitions, seed=args.seed)
    sites = [f"blocks.{layer}.{kind}" for layer in range(args.layers) for kind in ("attn.hook_out", "mlp.hook_out")]
    test_tokens, test_states = fsm.sample(128, 12, seed=args.seed + 999)
    held_out = fsm.sample(64, 24, seed=args.seed + 77)[0]

    started = time.perf_counter()
    model = tiny_transformer(fsm, n_layers=args.layers, seed=args.seed)
    train_on_fsm(model, fsm, steps=args.train_steps, seed=args.seed, progress=True)
    coded = CodebookModel(model, sites, n_codes=args.codes, k=args.k)
    coded.enabled = False
    rows = [
        (
            "plain model",
            next_state_accuracy(coded, fsm, test_tokens, test_states),
            mean_lm_loss(coded, held_out, 64, codebooks=False),
        )
    ]
    coded.enabled = True
    coded.kmeans_init(fsm.sample(64, 24, seed=args.seed + 5)[0])
    rows.append(
        (
            "codebooks, k-means only",
            next_state_accuracy(coded, fsm, test_tokens, test_states),
            mean_lm_loss(coded, held_out, 64, codebooks=True),
        )
    )
    finetune(
        coded,
        lambda step: fsm.sample(64, 24, seed=args.seed * 1_000_003 + 10_000 + step)[0],
        args.finetune_steps,
        FinetuneSettings(model_lr=args.model_lr),
        codebook_identity(coded, model_fingerprint(model)),
        progress=True,
    )
    rows.append(
        (
            "codebooks, fine-tuned",
            next_state_accuracy(coded, fsm, test_tokens, test_states),
            mean_lm_loss(coded, held_out, 64, codebooks=True),
        )
    )
    coded.enabled = False
    rows.append(
        (
            "fine-tuned, codebooks bypassed",
            next_state_accuracy(coded, fsm, test_tokens, test_states),
            mean_lm_loss(coded, held_out, 64, codebooks=False),
        )
    )
    coded.enabled = True

    print(
        f"\nTokFSM: {args.states} states x {fsm.digits} digits, {args.transitions} transitions; {args.layers}-layer model; "
        f"{args.codes} codes per site, k={args.k}\n"
    )
    print(f"{'':32s}{'next-state accuracy':>21s}{'LM loss':>10s}")
    for label, accuracy, loss in rows:
        print(f"{label:32s}{accuracy:21.3f}{loss:10.4f}")
    print(
        f"LM-loss increase of the fine-tuned codebook model over the plain model: {rows[2][2] - rows[0][2]:+.4f} nats"
    )

    purities, chance = site_purities(coded, test_tokens, test_states), chance_purity(test_states)
    print(f"\nPurity of the top code for the true current state (chance {chance:.3f}):")
    for site, purity in purities.items():
        print(f"  {site:24s}{purity:.3f}")

    codes = state_codes(coded, fsm, *fsm.sample(256, 12, seed=args.seed + 7))
    position = fsm.digits * 5  # the last digit of the fifth state (state j ends at digits * (j + 1))
    scopes = {f"layer {layer}": [s for s in sites if s.startswith(f"blocks.{layer}.")] for layer in range(args.layers)}
    scopes["attention"] = [s for s in sites if ".attn." in s]
    scopes["MLPs"] = [s for s in sites if ".mlp." in s]
    scopes["all sites"] = sites
    results = {
        scope: intervene(coded, fsm, codes, chosen, test_tokens, test_states, position, seed=args.seed)
        for scope, chosen in scopes.items()
    }
    results["all, all digits"] = intervene(
        coded, fsm, codes, sites, test_tokens, test_states, position, seed=args.seed, digits="all"
    )
    print(
        f"\nInterventions: force state B's codes at state A's last digit ({len(test_tokens)} contexts, B random, B != A)"
    )
    print(
        f"{'forced at':16s}{'mass on B succ.':>18s}{'mass on A succ.':>18s}{'JS to B':>16s}{'sampled in B succ.':>21s}"
    )
    for scope, r in results.items():
        print(
            f"{scope:16s}"
            + "".join(f"{a:>9.3f}->{b:<6.3f}" for a, b in (r.on_target, r.on_current, r.js_to_target, r.sampled_target))
        )
    print(f"\n{time.perf_counter() - started:.0f} s in all")

    figure, axis = plt.subplots(figsize=(6, 3.5))
    axis.bar(list(purities), list(purities.values()), color="#3b7dd8")
    axis.axhline(chance, color="#d62728", linestyle="--", label=f"chance ({chance:.2f})")
    axis.set_ylabel("purity for the true state")
    axis.set_ylim(0, 1)
    axis.tick_params(axis="x", labelrotation=20)
    axis.legend()
    axis.set_title("Codes recover the FSM's states")
    figure.tight_layout()
    figure.savefig(out / "purity.png", dpi=120)

    figure, axes = plt.subplots(1, 3, figsize=(14, 4))
    measures = [
        ("mass on B's successors", "on_target"),
        ("JS divergence to B", "js_to_target"),
        ("sampled next state in B's successors", "sampled_target"),
    ]
    for axis, (title, attribute) in zip(axes, measures):
        before = [getattr(r, attribute)[0] for r in results.values()]
        after = [getattr(r, attribute)[1] for r in results.values()]
        positions = range(len(results))
        axis.bar([p - 0.2 for p in positions], before, width=0.4, label="as is", color="#999999")
        axis.bar([p + 0.2 for p in positions], after, width=0.4, label="B's codes forced", color="#3b7dd8")
        axis.set_xticks(list(positions), list(results), rotation=30, ha="right", fontsize=8)
        axis.set_title(title, fontsize=10)
    axes[0].legend()
    figure.suptitle("Forcing state B's codes while the model is in state A")
    figure.tight_layout()
    figure.savefig(out / "interventions.png", dpi=120)
    print(f"plots: {out / 'purity.png'}, {out / 'interventions.png'}")


if __name__ == "__main__":
    main()
