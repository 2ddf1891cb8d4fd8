"""The dictionary workflow from Python, one call per step: harvest, train, evaluate, encode, query.

    python analyses/sae_features.py [--store store/] [--tokens 30000] [--arch topk]

Harvests SmolLM2-135M's layer-6 residual stream (resuming if the run exists), trains a sparse
dictionary on it, evaluates it with the reconstruction spliced into the model, encodes the run,
and prints the strongest contexts of a few features straight from SQL. The same steps on the
command line: `workbench harvest | train | eval | encode | sql`.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the CLI does; see workbench/cli/__init__.py

from workbench.encode import EncodeConfig, run_encode
from workbench.evaluate import EvalConfig, run_eval
from workbench.harvest import HarvestConfig, run_harvest
from workbench.store import Store
from workbench.store.sql import run_query
from workbench.train import TrainConfig, run_train

HOOK = "blocks.6.hook_out"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", default="store/")
    parser.add_argument("--tokens", type=int, default=30_000, help="tokens to harvest (default: %(default)s)")
    parser.add_argument("--arch", default="topk", help="dictionary family (default: %(default)s)")
    parser.add_argument("--features", type=int, default=3, help="features to show (default: %(default)s)")
    args = parser.parse_args()

    run = run_harvest(
        HarvestConfig(model="smollm2-135m", hooks=[HOOK], store=args.store, tokens=args.tokens, run="sae-features")
    ).run
    name = run_train(
        TrainConfig(
            store=args.store,
            hook=HOOK,
            run=run,
            arch=args.arch,
            k=32,
            latents=2304,
            tokens=300_000,
            batch_size=2048,
            name=f"sae-features-{args.arch}",
        )
    ).dictionary.name
    metrics = run_eval(EvalConfig(store=args.store, dictionary=name, ce_tokens=2048)).evaluation
    print(
        f"\n{name}: FVU {metrics.fvu:.3f}, L0 {metrics.l0:.1f}, dead {100 * metrics.dead_fraction:.1f}%, "
        f"CE-loss score {metrics.ce_loss_score:.3f}, KL {metrics.kl:.3f} (on the training run)"
    )
    run_encode(EncodeConfig(store=args.store, dictionary=name))

    store = Store.open_existing(args.store)
    features = run_query(
        store,
        f"""
        SELECT feature, density, max FROM feature_stats WHERE dictionary = '{name}' AND density BETWEEN 0.001 AND 0.05
        ORDER BY max DESC LIMIT {int(args.features)}""",
    ).table.to_pylist()
    for row in features:
        print(f"\nfeature {row['feature']}: fires on {100 * row['density']:.2f}% of tokens, max {row['max']:.2f}")
        contexts = run_query(
            store,
            f"""
            WITH top AS (SELECT run, token_id, value FROM feature_acts
                         WHERE dictionary = '{name}' AND feature = {row["feature"]} ORDER BY value DESC LIMIT 5)
            SELECT top.value, string_agg(CASE WHEN c.token_id = top.token_id THEN '[[' || c.token || ']]' ELSE c.token END,
                                         '' ORDER BY c.position) AS context
            FROM top JOIN tokens t USING (run, token_id)
                     JOIN tokens c ON c.run = t.run AND c.context_id = t.context_id AND c.position BETWEEN t.position - 8 AND t.position + 2
            GROUP BY top.value, top.token_id ORDER BY top.value DESC""",
        ).table.to_pylist()
        for context in contexts:
            print(f"  {context['value']:6.2f}  {context['context']!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
