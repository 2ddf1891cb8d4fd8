"""The `workbench` command. Each subcommand is a thin layer over one library call."""

from __future__ import annotations

import argparse
import os
import sys
import textwrap

# Process-wide threading policy, set before torch loads its OpenMP runtime (this module
# imports torch lazily). Busy-waiting OpenMP workers otherwise hold both cores of a small
# machine between forward passes and slow the shard writer and commit thread: on 2 cores
# this took a SmolLM2 harvest from ~1.2x to ~1.08x the bare forward time (bench/harvest.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from workbench.errors import WorkbenchError

EPILOG = textwrap.dedent("""\
    typical session:
      workbench harvest --model smollm2-135m --hooks blocks.6.hook_out --corpus default --tokens 50000 --store store/
      workbench store info store/
      workbench sql store/ "SELECT hook, count(*) FROM activations GROUP BY hook"
      workbench probe depth --model smollm2-135m --corpus default --tokens 20000 --store store/
      workbench train --store store/ --hook blocks.6.hook_out --arch topk --k 32 --latents 4608 --tokens 2M
      workbench eval --store store/ --dict <name>; workbench encode --store store/ --dict <name>
      workbench app --store store/

    Run `workbench COMMAND --help` for each command's options.
""")


def _print_table(table, max_rows: int = 10_000) -> None:
    """Render an Arrow table with DuckDB's box renderer (one way to print tables everywhere)."""
    import duckdb

    con = duckdb.connect()
    con.from_arrow(table).show(max_rows=max_rows, max_width=200)


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


# -- harvest -------------------------------------------------------------------------

def _add_harvest(sub) -> None:
    from workbench.models import BACKENDS, REGISTRY

    models = "; ".join(f"{name}: {entry.description}" for name, entry in REGISTRY.items())
    p = sub.add_parser(
        "harvest",
        help="run a model over a corpus and store activations at hook points",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.dedent("""\
            Run a model over a corpus and stream the activations at the given hook points into a store.

            The forward pass stops after the deepest hook, so layers past it cost nothing. Work is
            committed one chunk of contexts at a time: if the harvest is interrupted (Ctrl-C, kill -9,
            power loss), run the same command again and it resumes where the last commit left off.
            While it runs, `workbench sql` and `workbench store info` read the last committed state.
        """),
        epilog=textwrap.dedent("""\
            hook points (canonical TransformerLens bridge names; i is the layer):
              blocks.i.hook_in        residual stream entering block i   (legacy: blocks.i.hook_resid_pre)
              blocks.i.attn.hook_out  attention output                   (legacy: blocks.i.hook_attn_out)
              blocks.i.mlp.hook_in    MLP input, after the pre-MLP norm
              blocks.i.mlp.hook_out   MLP output                         (legacy: blocks.i.hook_mlp_out)
              blocks.i.hook_out       residual stream leaving block i    (legacy: blocks.i.hook_resid_post)

            examples:
              workbench harvest --model smollm2-135m --hooks blocks.6.hook_out,blocks.6.mlp.hook_in,blocks.6.mlp.hook_out \\
                                --corpus default --tokens 50000 --store store/
              workbench harvest --model tiny --hooks blocks.1.hook_out --tokens 4096 --store /tmp/s --backend nnsight
              workbench harvest --model ./my-hf-folder --hooks blocks.3.hook_out --corpus notes.jsonl --store store/ --run notes
        """),
    )
    p.add_argument("--model", required=True, help=f"registry name, local HF folder or hub id. Registry: {models}")
    p.add_argument("--hooks", required=True, help="comma-separated hook points (see below)")
    p.add_argument("--store", required=True, help="store directory (created if missing)")
    p.add_argument("--corpus", default="default",
                   help="'default' (CPython's pydoc topics, ~114k SmolLM2 tokens), a .txt/.md file or folder, "
                        ".jsonl, .parquet, or hf:NAME[:CONFIG] (default: %(default)s)")
    p.add_argument("--text-column", default="text", help="text field for .jsonl/.parquet/hf corpora (default: %(default)s)")
    p.add_argument("--tokens", type=int, default=50_000,
                   help="tokens to harvest, rounded up to whole contexts; capped by the corpus (default: %(default)s)")
    p.add_argument("--run", help="run name; repeat it to resume (default: derived from model, corpus and tokens)")
    p.add_argument("--backend", choices=BACKENDS, default="nnsight",
                   help="hooking library; both give the same numbers, nnsight is faster here (default: %(default)s)")
    p.add_argument("--context-len", type=int, default=128, help="tokens per context, including the BOS (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=8, help="contexts per forward pass (default: %(default)s)")
    p.add_argument("--chunk-contexts", type=int, default=64,
                   help="contexts per shard: the unit of commit, and the most a crash can lose (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: %(default)s)")
    p.set_defaults(func=_run_harvest)


def _run_harvest(args) -> int:
    from workbench.harvest import HarvestConfig, run_harvest

    config = HarvestConfig(
        model=args.model, hooks=[h.strip() for h in args.hooks.split(",") if h.strip()], store=args.store,
        corpus=args.corpus, tokens=args.tokens, run=args.run, backend=args.backend, context_len=args.context_len,
        batch_size=args.batch_size, chunk_contexts=args.chunk_contexts, device=args.device, text_column=args.text_column,
    )
    result = run_harvest(config)
    if result.tokens_harvested_now == 0:
        print(f"Run '{result.run}' is already complete ({result.n_tokens} tokens); nothing to do.")
    else:
        resumed = f", resumed after {result.chunks_resumed_from} committed chunks" if result.chunks_resumed_from else ""
        print(f"Run '{result.run}': harvested {result.tokens_harvested_now} tokens{resumed}; "
              f"{result.n_tokens} tokens stored. See `workbench store info {args.store}`.")
    return 0


# -- store ---------------------------------------------------------------------------

def _add_store(sub) -> None:
    p = sub.add_parser("store", help="inspect, verify and upgrade a store")
    store_sub = p.add_subparsers(dest="store_command", required=True, metavar="{info,verify,upgrade}")

    info = store_sub.add_parser("info", help="runs, hook points, token counts and sizes")
    info.add_argument("store")
    info.set_defaults(func=_run_store_info)

    verify = store_sub.add_parser(
        "verify", help="check every shard against its recorded SHA-256",
        description="Check every committed shard file against the SHA-256 and row count recorded when it was "
                    "committed. With --drop-corrupt, damaged chunks are unregistered so that re-running the "
                    "harvest command regenerates them.")
    verify.add_argument("store")
    verify.add_argument("--run", help="only this run")
    verify.add_argument("--drop-corrupt", action="store_true", help="unregister damaged chunks for the next harvest to redo")
    verify.set_defaults(func=_run_store_verify)

    upgrade = store_sub.add_parser("upgrade", help="migrate a store written by an older workbench to the current schema")
    upgrade.add_argument("store")
    upgrade.set_defaults(func=_run_store_upgrade)


def _run_store_info(args) -> int:
    from workbench.store import Store
    from workbench.store.maintenance import summarize

    summary = summarize(Store.open_existing(args.store))
    print(f"Store {summary['root']} (schema v{summary['schema_version']}): catalog {_human_bytes(summary['catalog_bytes'])}, "
          f"shards {_human_bytes(summary['shard_bytes'])}, models {_human_bytes(summary['model_bytes'])}")
    print("\nRuns")
    _print_table(summary["runs"])
    print("\nHook points (bytes per token as stored, against raw fp32)")
    _print_table(summary["hook_points"])
    if summary["probe_runs"].num_rows:
        print("\nProbe runs (tables probe_*)")
        _print_table(summary["probe_runs"])
    if summary["dictionaries"].num_rows:
        print("\nDictionaries (latest `workbench eval` figures; empty until evaluated)")
        _print_table(summary["dictionaries"])
    if summary["codebooks"].num_rows:
        print("\nCodebooks (held-out LM loss: original model, with codebooks, fine-tuned with codebooks bypassed)")
        _print_table(summary["codebooks"])
    return 0


def _run_store_verify(args) -> int:
    from workbench.store import Store
    from workbench.store.maintenance import drop_chunks, verify

    store = Store.open_existing(args.store)
    checked, problems = verify(store, args.run)
    for p in problems:
        print(f"DAMAGED  run={p.run} hook={p.hook} chunk={p.chunk}: {p.path} ({p.problem})")
    if not problems:
        print(f"All {checked} shards match their checksums.")
        return 0
    if args.drop_corrupt:
        dropped = drop_chunks(store, problems)
        print(f"Unregistered {dropped} damaged chunk(s). Re-run the original harvest command (same --run) to regenerate them.")
        return 0
    print(f"{len(problems)} of {checked} shards are damaged. Run again with --drop-corrupt, then re-run the harvest "
          "command with the same --run to regenerate them.")
    return 1


def _run_store_upgrade(args) -> int:
    from workbench.store import Store
    from workbench.store.maintenance import upgrade

    old, new = upgrade(Store(args.store))
    print(f"Store {args.store}: schema v{old} -> v{new}." if old != new else f"Store {args.store} is already at schema v{new}.")
    return 0


# -- sql -----------------------------------------------------------------------------

def _add_sql(sub) -> None:
    p = sub.add_parser(
        "sql", help="read-only SQL against a store",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run one read-only SQL statement against a store and print the result as a table. "
                    "It sees the last committed state, also while a harvest writes.",
        epilog=textwrap.dedent("""\
            tables and views (documented in store/README.md):
              runs, documents, tokens, hook_points, shards, schema_info, activations (view over the shards)

            examples:
              workbench sql store/ "SELECT run, status, n_tokens FROM runs"
              workbench sql store/ "SELECT hook, count(*) AS tokens FROM activations GROUP BY hook"
              workbench sql store/ "SELECT t.token, list_max(a.act) AS max_dim FROM activations a
                                    JOIN tokens t USING (run, token_id)
                                    WHERE a.hook = 'blocks.6.hook_out' ORDER BY max_dim DESC LIMIT 10"
        """),
    )
    p.add_argument("store")
    p.add_argument("query")
    p.add_argument("--max-rows", type=int, default=1000, help="cut the result after this many rows (default: %(default)s)")
    p.add_argument("--timeout", type=float, default=60, help="interrupt the query after this many seconds (default: %(default)s)")
    p.set_defaults(func=_run_sql)


def _run_sql(args) -> int:
    from workbench.store import Store
    from workbench.store.sql import run_query

    result = run_query(Store.open_existing(args.store), args.query, max_rows=args.max_rows, timeout_s=args.timeout)
    _print_table(result.table, max_rows=args.max_rows)
    if result.truncated:
        print(f"(cut at {args.max_rows} rows; raise --max-rows to see more)", file=sys.stderr)
    return 0


# -- probe ---------------------------------------------------------------------------

def _add_probe(sub) -> None:
    from workbench.models import BACKENDS

    p = sub.add_parser("probe", help="depth-usage probes: how much does each layer contribute?")
    probe_sub = p.add_subparsers(dest="probe_command", required=True, metavar="{depth,maps}")
    depth = probe_sub.add_parser(
        "depth", formatter_class=argparse.RawDescriptionHelpFormatter,
        help="sublayer norm ratios and cosines, layer skipping, logit lens, depth score",
        description=textwrap.dedent("""\
            Measure how much each layer contributes (Csordas, Manning, Potts 2025), and store tidy tables:
              probe_sublayer      per layer: ||a||/||h||, ||m||/||h+a||, ||a+m||/||h|| and cosines (mean, max over tokens)
              probe_skip_layers   skip layer s before position t: relative change of every later layer's update at >= t
              probe_skip_output   ... and of the output distribution (L2 of the probability change, KL)
              probe_logit_lens    per layer: KL to the final distribution and top-5 overlap
              probe_depth_scores  the effect-weighted mean layer index for the task
            One clean forward pass per batch feeds every probe; skipping adds one pass per skipped layer,
            on the first --skip-tokens tokens. The BOS position is excluded everywhere.
        """),
        epilog="example:\n  workbench probe depth --model smollm2-135m --corpus default --tokens 20000 --store store/")
    depth.add_argument("--model", required=True, help="registry name, local HF folder or hub id")
    depth.add_argument("--store", required=True)
    depth.add_argument("--corpus", default="default", help="as for harvest (default: %(default)s)")
    depth.add_argument("--text-column", default="text")
    depth.add_argument("--tokens", type=int, default=20_000, help="tokens for the sublayer probe (default: %(default)s)")
    depth.add_argument("--lens-tokens", type=int, default=4096, help="of those, tokens for the logit lens; 0 skips it (default: %(default)s)")
    depth.add_argument("--skip-tokens", type=int, default=1024, help="of those, tokens for layer skipping; 0 skips it (default: %(default)s)")
    depth.add_argument("--skip-layers", help="comma-separated layers to skip (default: all)")
    depth.add_argument("--split-position", type=int, help="t: skip before it, measure from it (default: context length / 2)")
    depth.add_argument("--task", help="label for the depth score (default: the corpus)")
    depth.add_argument("--name", help="probe run name; re-using one replaces its results")
    depth.add_argument("--backend", choices=BACKENDS, default="nnsight")
    depth.add_argument("--context-len", type=int, default=128)
    depth.add_argument("--batch-size", type=int, default=8)
    depth.add_argument("--device", default="cpu")
    depth.set_defaults(func=_run_probe_depth)

    maps = probe_sub.add_parser(
        "maps", help="linear maps from each layer of one model to each layer of another",
        description="Fit an affine map from every layer of --source to every layer of --target on the same text and "
                    "store the held-out relative error ||pred - target|| / ||target|| (table probe_linear_maps). "
                    "Tokens are aligned by their position in the text.")
    maps.add_argument("--source", required=True)
    maps.add_argument("--target", required=True)
    maps.add_argument("--store", required=True)
    maps.add_argument("--corpus", default="default")
    maps.add_argument("--text-column", default="text")
    maps.add_argument("--tokens", type=int, default=8192)
    maps.add_argument("--name")
    maps.add_argument("--backend", choices=BACKENDS, default="nnsight")
    maps.add_argument("--device", default="cpu")
    maps.set_defaults(func=_run_probe_maps)


def _run_probe_depth(args) -> int:
    from workbench.probes.depth import DepthProbeConfig, run_depth_probes

    try:
        skip_layers = [int(x) for x in args.skip_layers.split(",")] if args.skip_layers else None
    except ValueError as exc:
        raise WorkbenchError(f"--skip-layers takes comma-separated integers, got '{args.skip_layers}'.") from exc
    name = run_depth_probes(DepthProbeConfig(
        model=args.model, store=args.store, corpus=args.corpus, tokens=args.tokens, name=args.name, task=args.task,
        backend=args.backend, context_len=args.context_len, batch_size=args.batch_size, lens_tokens=args.lens_tokens,
        skip_tokens=args.skip_tokens, skip_layers=skip_layers, split_position=args.split_position, device=args.device,
        text_column=args.text_column)).probe_run.probe_run
    print(f"Stored depth probes as '{name}'. For example:\n"
          f"  workbench sql {args.store} \"SELECT * FROM probe_depth_scores WHERE probe_run = '{name}'\"")
    return 0


def _run_probe_maps(args) -> int:
    from workbench.probes.linear_maps import LinearMapsConfig, run_linear_maps

    name = run_linear_maps(LinearMapsConfig(
        source=args.source, target=args.target, store=args.store, corpus=args.corpus, tokens=args.tokens,
        name=args.name, backend=args.backend, device=args.device, text_column=args.text_column)).probe_run.probe_run
    print(f"Stored linear maps as '{name}'. For example:\n"
          f"  workbench sql {args.store} \"SELECT * FROM probe_linear_maps WHERE probe_run = '{name}' ORDER BY rel_error LIMIT 10\"")
    return 0


# -- train ---------------------------------------------------------------------------

def _add_train(sub) -> None:
    p = sub.add_parser(
        "train", help="train a sparse dictionary on stored activations",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.dedent("""\
            Train a sparse dictionary on a store's activations and register it in the `dictionaries` table.
            Batches are shuffled across shards without loading the store into memory; BOS positions are left out.
            A checkpoint is written every --checkpoint-seconds: after an interruption (even kill -9), run the
            same command again and it resumes exactly. Files: <store>/dictionaries/<name>/ (cfg.json and
            sae_weights.safetensors, SAELens's layout: sae_lens.SAE.load_from_disk opens topk, the JumpReLU families
            and their transcoders).

            families:
              topk          k latents per token; AuxK for dead latents
              batchtopk     k per token on average over a batch; JumpReLU threshold at inference
              matryoshka    batchtopk with nested prefixes that must each reconstruct
              mutualchoice  batch-wide top k*batch, with aux_zipf_loss for under-used latents
              featurechoice each latent takes its k*batch/latents strongest tokens; aux_zipf_loss
              topafa        per token, latents until their norm matches the input's (k is a ceiling)
              mp            matching pursuit, k greedy steps over a tied dictionary
              transcoder    shorthand for batchtopk with --out (SAELens: jumprelu_transcoder)
            Any family except mp and topafa becomes a transcoder with --out.
        """),
        epilog="examples:\n"
               "  workbench train --store store/ --hook blocks.6.hook_out --arch topk --k 32 --latents 4608 --tokens 2M\n"
               "  workbench train --store store/ --arch transcoder --in blocks.6.mlp.hook_in --out blocks.6.mlp.hook_out --k 32")
    p.add_argument("--store", required=True)
    p.add_argument("--hook", "--in", dest="hook", required=True,
                   help="the hook point to encode (canonical or legacy name); for a transcoder, its input")
    p.add_argument("--out", dest="hook_out", help="transcoders: the hook to predict, e.g. blocks.6.mlp.hook_out")
    p.add_argument("--skip-connection", action="store_true", help="transcoders: add a learned linear skip term")
    p.add_argument("--arch", default="topk", choices=["topk", "batchtopk", "matryoshka", "mutualchoice", "featurechoice",
                                                      "topafa", "mp", "transcoder"],
                   help="dictionary family, see above (default: %(default)s)")
    p.add_argument("--k", type=int, default=32, help="active latents per token (default: %(default)s)")
    p.add_argument("--latents", type=int, default=4608, help="dictionary size (default: %(default)s)")
    p.add_argument("--tokens", type=_int_with_suffix, default=2_000_000, help="training tokens, e.g. 2M or 500k; "
                   "epochs repeat the stored tokens in a new order (default: 2M)")
    p.add_argument("--run", help="harvest run to read (default: the only run with this hook)")
    p.add_argument("--name", help="dictionary name; repeat it to resume (default: derived from arch, hook, k, latents)")
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--lr", type=float, help="Adam learning rate (default: 2e-4 / sqrt(latents / 16384))")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-seconds", type=float, default=60)
    p.set_defaults(func=_run_train)


def _int_with_suffix(text: str) -> int:
    multipliers = {"k": 1_000, "m": 1_000_000, "b": 1_000_000_000}
    text = text.strip().lower().replace("_", "")
    try:
        return int(float(text[:-1]) * multipliers[text[-1]]) if text[-1] in multipliers else int(text)
    except (ValueError, IndexError) as exc:
        raise argparse.ArgumentTypeError(f"expected a number like 2000000, 2M or 500k, got '{text}'") from exc


def _run_train(args) -> int:
    from workbench.train import TrainConfig, run_train

    result = run_train(TrainConfig(store=args.store, hook=args.hook, hook_out=args.hook_out,
                                   skip_connection=args.skip_connection, arch=args.arch, k=args.k, latents=args.latents,
                                   tokens=args.tokens, run=args.run, name=args.name, batch_size=args.batch_size,
                                   lr=args.lr, seed=args.seed, checkpoint_seconds=args.checkpoint_seconds))
    name = result.dictionary.name
    print(f"Dictionary '{name}' is trained. See:\n"
          f"  workbench sql {args.store} \"SELECT name, arch, k, n_latents, train_fvu, train_l0, dead_fraction FROM dictionaries\"")
    return 0


def _add_encode(sub) -> None:
    p = sub.add_parser(
        "encode", help="write a dictionary's sparse feature activations and feature statistics into the store",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Encode the dictionary's run with it and store every non-zero (token_id, feature, value) in "
                    "`feature_acts`, sorted by feature, plus density, max, mean and quantiles per feature in "
                    "`feature_stats`. BOS positions are left out. Re-encoding replaces the dictionary's rows.",
        epilog=textwrap.dedent("""\
            example, then a feature's top contexts:
              workbench encode --store store/ --dict topk-blocks.6.hook_out-k32-4608
              workbench sql store/ "SELECT f.value, t.context_id, t.position, t.token FROM feature_acts f
                                    JOIN tokens t USING (run, token_id)
                                    WHERE f.dictionary = 'topk-blocks.6.hook_out-k32-4608' AND f.feature = 7
                                    ORDER BY f.value DESC LIMIT 20"
        """))
    p.add_argument("--store", required=True)
    p.add_argument("--dict", required=True, dest="dictionary", help="dictionary name (see the dictionaries table)")
    p.set_defaults(func=_run_encode)


def _run_encode(args) -> int:
    from workbench.encode import EncodeConfig, run_encode

    result = run_encode(EncodeConfig(store=args.store, dictionary=args.dictionary))
    n_tokens, n_rows = result.n_tokens, result.n_rows
    print(f"Encoded {n_tokens} tokens with '{args.dictionary}': {n_rows} non-zero activations "
          f"({n_rows / max(n_tokens, 1):.1f} per token) in feature_acts; statistics in feature_stats.")
    return 0


def _add_eval(sub) -> None:
    from workbench.models import BACKENDS

    p = sub.add_parser(
        "eval", help="FVU, L0, dead %%, CE-loss score and KL of a dictionary; written to the store",
        description="Measure a dictionary on a run's stored activations (FVU against the per-dimension mean, L0, "
                    "dead latents) and with its reconstruction spliced into the model (CE-loss score, delta CE, KL). "
                    "Results go to the dictionary_evals table. Definitions: README and DESIGN.md.")
    p.add_argument("--store", required=True)
    p.add_argument("--dict", required=True, dest="dictionary")
    p.add_argument("--run", help="run to evaluate on (default: the training run; harvest a separate run for held-out numbers)")
    p.add_argument("--ce-tokens", type=int, default=4096, help="tokens for the spliced CE and KL (default: %(default)s)")
    p.add_argument("--backend", choices=BACKENDS, default="nnsight")
    p.set_defaults(func=_run_eval)


def _run_eval(args) -> int:
    from workbench.evaluate import EvalConfig, run_eval

    r = run_eval(EvalConfig(store=args.store, dictionary=args.dictionary, run=args.run, ce_tokens=args.ce_tokens,
                            backend=args.backend)).evaluation
    print(f"{r.dictionary} on run '{r.eval_run}' ({r.n_tokens} tokens; CE on {r.n_ce_tokens}):\n"
          f"  FVU {r.fvu:.4f}   L0 {r.l0:.2f}   dead {100 * r.dead_fraction:.1f}%\n"
          f"  CE clean {r.ce_clean:.4f}, spliced {r.ce_spliced:.4f}, zero-ablated {r.ce_zero_ablation:.4f} nats\n"
          f"  CE-loss score {r.ce_loss_score:.4f}   delta CE {r.delta_ce:+.4f} nats   KL {r.kl:.4f}")
    if abs(r.ce_zero_ablation - r.ce_clean) < 0.01:
        print("  note: zero-ablating this hook barely changes the loss (< 0.01 nats), so the CE-loss score is not "
              "meaningful here; read delta CE and KL instead.")
    return 0


# -- import --------------------------------------------------------------------------

def _add_import(sub) -> None:
    p = sub.add_parser(
        "import", help="register a SAELens-format dictionary folder in the store",
        description="Import a dictionary folder in SAELens's layout (cfg.json + sae_weights.safetensors, as "
                    "SAE.save_model writes it): topk, standard (ReLU), jumprelu and the transcoder variants. It is "
                    "converted exactly, checked against the hook's width, and then works with eval and encode.",
        epilog="example:\n  workbench import ~/saes/l6_topk --store store/ --hook blocks.6.hook_resid_post",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="the dictionary folder")
    p.add_argument("--store", required=True)
    p.add_argument("--hook", "--in", dest="hook", required=True, help="the hook it encodes (canonical or legacy name)")
    p.add_argument("--out", dest="hook_out", help="transcoders: the hook it predicts")
    p.add_argument("--run", help="the run whose activations it reads (default: the only run with the hook)")
    p.add_argument("--name", help="name in the store (default: derived from the family, hook and width)")
    p.set_defaults(func=_run_import)


def _run_import(args) -> int:
    from workbench.import_sae import ImportConfig, run_import

    name = run_import(ImportConfig(store=args.store, source=args.source, hook=args.hook, hook_out=args.hook_out,
                                   run=args.run, name=args.name)).dictionary.name
    print(f"Imported as '{name}'. Next:\n  workbench eval --store {args.store} --dict {name}\n"
          f"  workbench encode --store {args.store} --dict {name}")
    return 0


# -- models --------------------------------------------------------------------------

def _add_models(sub) -> None:
    p = sub.add_parser("models", help="list the named models")
    p.set_defaults(func=_run_models)


def _run_models(args) -> int:
    from workbench.models import REGISTRY

    for name, entry in REGISTRY.items():
        print(f"{name:14s} {entry.description}")
    print("\nAny local Hugging Face folder or hub id also works as --model.")
    return 0


# -- circuit -------------------------------------------------------------------------

def _add_circuit(sub) -> None:
    from workbench.models import BACKENDS

    p = sub.add_parser("circuit", help="which parts of the model do a task? activation patching")
    circuit_sub = p.add_subparsers(dest="circuit_command", required=True, metavar="{patch,codes,graph,deembed}")
    patch = circuit_sub.add_parser(
        "patch", formatter_class=argparse.RawDescriptionHelpFormatter,
        help="activation patching over layers, heads and head x position: the reference circuit",
        description=textwrap.dedent("""\
            Run the corrupted prompts with one activation taken from the clean run, and store how much of
            the clean behaviour it restores: (metric_patched - metric_corrupted) / (metric_clean - metric_corrupted),
            1 = that activation carries the whole difference. Tables: circuit_runs, circuit_patching.
              layers          residual stream entering each block (blocks.{l}.hook_in), per position
              heads           each attention head's output (its slice of blocks.{l}.attn.hook_z), all positions
              head-positions  each head at each position (layers x heads x positions passes: slow on SmolLM2)
            Tasks: ioi (logit difference), greater-than (probability difference on one-token digits),
            or PATH.jsonl with {"clean", "corrupted", "answer", "wrong"} per line (logit difference).
        """),
        epilog=textwrap.dedent("""\
            examples:
              workbench circuit patch --task ioi --model smollm2-135m --store store/
              workbench circuit patch --task greater-than --model smollm2-135m --store store/ --levels heads
              workbench circuit patch --task pairs.jsonl --model smollm2-135m --store store/ --levels head-positions --layers 0,1,2
        """))
    patch.add_argument("--task", required=True, help="ioi, greater-than or PATH.jsonl")
    patch.add_argument("--model", required=True, help="registry name, local HF folder or hub id")
    patch.add_argument("--store", required=True)
    patch.add_argument("--levels", default="layers,heads",
                       help="comma-separated: layers, heads, head-positions (default: %(default)s)")
    patch.add_argument("--pairs", type=int, default=16, help="prompt pairs for ioi and greater-than (default: %(default)s)")
    patch.add_argument("--layers", help="comma-separated layers to patch (default: all)")
    patch.add_argument("--name", help="circuit run name; re-using one replaces its results")
    patch.add_argument("--backend", choices=BACKENDS, default="nnsight")
    patch.add_argument("--seed", type=int, default=0, help="seed for the built-in tasks' names and numbers")
    patch.set_defaults(func=_run_circuit_patch)

    codes = circuit_sub.add_parser(
        "codes", formatter_class=argparse.RawDescriptionHelpFormatter,
        help="find a task's circuit from discrete SAE codes of head outputs (O'Neill & Bui), scored against patching",
        description=textwrap.dedent("""\
            Take every attention head's write to the residual stream on the task's positive (clean) and negative
            (corrupted) prompts, train one small TopK dictionary on a few of them, turn each head output into its
            argmax code, and score each head by the codes that occur only on positives (and each pair of heads by
            such code co-occurrences). Against the newest patching run of the task (or --reference), report the
            ROC AUC and both runtimes. Tables: circuit_runs, circuit_code_heads, circuit_code_pairs.
        """),
        epilog=textwrap.dedent("""\
            examples:
              workbench circuit patch --task ioi --model smollm2-135m --store store/ --levels heads
              workbench circuit codes --task ioi --store store/
              workbench circuit codes --task greater-than --store store/ --position mean --latents 200   # the paper's settings
        """))
    codes.add_argument("--task", required=True, help="ioi, greater-than or PATH.jsonl")
    codes.add_argument("--store", required=True)
    codes.add_argument("--model", help="default: the reference patching run's model")
    codes.add_argument("--reference", help="patching run to score against (default: the task's newest with head scores)")
    codes.add_argument("--reference-threshold", type=float, default=0.1,
                       help="a head belongs to the reference circuit if |its patching score| >= this (default: %(default)s)")
    codes.add_argument("--pairs", type=int, default=32, help="prompt pairs for ioi and greater-than (default: %(default)s)")
    codes.add_argument("--train-prompts", type=int, default=10,
                       help="prompts the dictionary is trained on, half positive (default: %(default)s)")
    codes.add_argument("--latents", type=int, help="dictionary width (default: 4 per attention head)")
    codes.add_argument("--k", type=int, default=4, help="active latents per vector while training (default: %(default)s)")
    codes.add_argument("--position", choices=("last", "mean"), default="last",
                       help="head output at the last position, or the mean over positions as in the paper (default: %(default)s)")
    codes.add_argument("--name", help="circuit run name; re-using one replaces its results")
    codes.add_argument("--backend", choices=BACKENDS, default="nnsight")
    codes.add_argument("--seed", type=int, default=0)
    codes.set_defaults(func=_run_circuit_codes)

    graph = circuit_sub.add_parser(
        "graph", formatter_class=argparse.RawDescriptionHelpFormatter,
        help="an attribution graph of one prompt through transcoders (circuit-tracer's JSON format)",
        description=textwrap.dedent("""\
            Replace each MLP that has a transcoder by its features plus an error node, freeze attention patterns
            and norm scales on the prompt, and compute every edge exactly: source value x gradient of the target
            (the answer's logit, or an active feature's pre-activation). Edges through attention run through the
            frozen patterns. MLPs without a transcoder become error nodes. Prune by influence on the logit, report
            the replacement and completeness scores, and store the pruned graph as JSON in circuit-tracer's
            format under STORE/graphs/ (table circuit_graphs); the app's Circuits page draws it.
        """),
        epilog=textwrap.dedent("""\
            example (one transcoder per MLP layer; a subset of layers is fine):
              workbench circuit graph --prompt "When Mary and John went to the store, John gave a drink to" \\
                  --transcoders tc-l4,tc-l6,tc-l8 --store store/ --target " Mary" --json mary.json
        """))
    graph.add_argument("--prompt", required=True)
    graph.add_argument("--transcoders", required=True, help="comma-separated transcoder names from the store")
    graph.add_argument("--store", required=True)
    graph.add_argument("--target", help="the answer token whose logit is explained (default: the top prediction)")
    graph.add_argument("--node-threshold", type=float, default=0.8,
                       help="keep the features that carry this share of the logit's influence (default: %(default)s)")
    graph.add_argument("--edge-threshold", type=float, default=0.98,
                       help="keep the edges that carry this share of the edge influence (default: %(default)s)")
    graph.add_argument("--max-features", type=int, default=4096, help="refuse graphs with more active features")
    graph.add_argument("--name", help="graph name; re-using one replaces it")
    graph.add_argument("--json", dest="json_path", help="also write the graph's JSON here")
    graph.set_defaults(func=_run_circuit_graph)

    deembed = circuit_sub.add_parser(
        "deembed", help="the tokens that most drive a transcoder feature, directly and through each attention head",
        description="De-embeddings (Dunefsky et al.): score every vocabulary token's embedding against the feature's "
                    "encoder direction, straight through the residual stream and through each attention head's OV "
                    "circuit in the layers up to the transcoder's. RMSNorm gains are folded in; their per-token scale, "
                    "which depends on the context, is left out.",
        epilog="example:\n  workbench circuit deembed --store store/ --dict tc-l6 --feature 123 --heads 5")
    deembed.add_argument("--store", required=True)
    deembed.add_argument("--dict", required=True, help="a transcoder (blocks.L.mlp.hook_in -> blocks.L.mlp.hook_out)")
    deembed.add_argument("--feature", type=int, required=True)
    deembed.add_argument("--tokens", type=int, default=10, help="tokens listed per path (default: %(default)s)")
    deembed.add_argument("--heads", type=int, default=5, help="heads shown, strongest first (default: %(default)s)")
    deembed.set_defaults(func=_run_circuit_deembed)


def _run_circuit_patch(args) -> int:
    from workbench.circuits.patching import PatchingConfig, run_patching

    try:
        layers = [int(x) for x in args.layers.split(",")] if args.layers else None
    except ValueError as exc:
        raise WorkbenchError(f"--layers takes comma-separated integers, got '{args.layers}'.") from exc
    levels = [level.strip() for level in args.levels.split(",") if level.strip()]
    result = run_patching(PatchingConfig(task=args.task, model=args.model, store=args.store, levels=levels,
                                         pairs=args.pairs, layers=layers, backend=args.backend, name=args.name,
                                         seed=args.seed))
    name = result.circuit_run.circuit_run
    print(f"metric: clean {result.circuit_run.metric_clean:.4f}, corrupted {result.circuit_run.metric_corrupted:.4f}")
    for level, scores in result.levels.items():
        top = sorted(scores.scores, key=lambda s: -abs(s.score))[:5]
        where = ", ".join(f"L{s.layer}" + (f"H{s.head}" if s.head is not None else "")
                          + (f"@{s.position}" if s.position is not None else "") + f" {s.score:+.2f}" for s in top)
        print(f"{level:15s} strongest: {where}")
    print(f"Stored as '{name}'. For example:\n  workbench sql {args.store} \"SELECT layer, head, round(score, 3) AS score "
          f"FROM circuit_patching WHERE circuit_run = '{name}' AND level = 'heads' ORDER BY abs(score) DESC LIMIT 10\"")
    return 0


def _run_circuit_codes(args) -> int:
    import numpy as np

    from workbench.circuits.codes import CodesConfig, run_codes

    result = run_codes(CodesConfig(task=args.task, store=args.store, model=args.model, reference=args.reference,
                                   reference_threshold=args.reference_threshold, pairs=args.pairs,
                                   train_prompts=args.train_prompts, latents=args.latents, k=args.k,
                                   position=args.position, backend=args.backend, name=args.name, seed=args.seed))
    run = result.circuit_run
    heads = result.scores.head_scores
    order = np.argsort(-heads, axis=None, kind="stable")[:8]
    print("heads with the most codes unique to positives: "
          + ", ".join(f"L{i // heads.shape[1]}H{i % heads.shape[1]} {int(heads.flat[i])}" for i in order))
    print(f"time: {result.scores.wall_s:.1f}s (forward passes, dictionary training, scoring)")
    if run.reference_run:
        print(f"against patching run '{run.reference_run}' (heads with |score| >= {args.reference_threshold}): "
              f"ROC AUC {run.roc_auc_heads:.3f} for heads, {run.roc_auc_pairs:.3f} for pairs of heads")
        if result.reference_wall_s:
            print(f"that patching run took {result.reference_wall_s:.1f}s: "
                  f"{result.reference_wall_s / result.scores.wall_s:.0f}x longer")
    else:
        print("no patching run of this task to score against: run `workbench circuit patch` for ROC AUC")
    print(f"Stored as '{run.circuit_run}' (tables circuit_code_heads, circuit_code_pairs).")
    return 0


def _run_circuit_graph(args) -> int:
    from workbench.circuits.attribution import GraphConfig, greedy_paths, run_graph

    names = [n.strip() for n in args.transcoders.split(",") if n.strip()]
    result = run_graph(GraphConfig(prompt=args.prompt, transcoders=names, store=args.store, target=args.target,
                                   node_threshold=args.node_threshold, edge_threshold=args.edge_threshold,
                                   max_features=args.max_features, name=args.name, json_path=args.json_path))
    record, graph = result.graph, result.attribution
    features = sum(node.kind == "feature" for node in graph.nodes)
    print(f"target {record.target_token!r}: logit {record.target_logit:.3f}; {features} active features, "
          f"{record.n_nodes} nodes, {record.n_edges} edges")
    print(f"replacement score {record.replacement_score:.3f}, completeness score {record.completeness_score:.3f}")
    print(f"pruned to {record.n_kept_nodes} nodes and {record.n_kept_edges} links; stored as '{record.graph}'"
          + (f", JSON also at {args.json_path}" if args.json_path else ""))
    top = sorted((n for n in graph.nodes if n.kind == "feature"), key=lambda n: -n.influence)[:5]
    if top:
        print("most influential features: " + ", ".join(f"L{n.layer}#{n.feature}@{n.position} {n.influence:.3f}" for n in top))
    label = lambda n: {"embedding": f"emb {n.token!r}@{n.position}", "error": f"L{n.layer} error@{n.position}",  # noqa: E731
                       "feature": f"L{n.layer}#{n.feature}@{n.position}", "logit": f"logit {n.token!r}"}[n.kind]
    print("strongest paths (share of the logit's input along the path):")
    for strength, path in greedy_paths(graph, 5):
        print(f"  {strength:.4f}  " + " -> ".join(label(graph.nodes[i]) for i in path))
    return 0


def _run_circuit_deembed(args) -> int:
    from workbench.circuits.attribution import DeembedConfig, run_deembed

    result = run_deembed(DeembedConfig(store=args.store, dictionary=args.dict, feature=args.feature, tokens=args.tokens,
                                       heads=args.heads))
    show = lambda pairs: ", ".join(f"{t!r} {v:+.2f}" for t, v in pairs)  # noqa: E731
    print(f"{result.dictionary} feature {result.feature} (layer {result.layer} MLP)")
    print(f"  direct:   {show(result.direct)}")
    for (layer, head), pairs in result.heads:
        print(f"  L{layer}H{head}: {show(pairs)}")
    return 0


# -- codebook ------------------------------------------------------------------------

def _add_codebook(sub) -> None:
    p = sub.add_parser("codebook", help="codebook features: discrete codes at sublayer outputs, their contexts, steering")
    codebook_sub = p.add_subparsers(dest="codebook_command", required=True, metavar="{train,encode,steer}")
    train = codebook_sub.add_parser(
        "train", formatter_class=argparse.RawDescriptionHelpFormatter,
        help="fine-tune a model with codebook bottlenecks at chosen sublayer outputs",
        description=textwrap.dedent("""\
            Put a codebook bottleneck after each site (Tamkin et al., "Codebook Features"): the site's output is
            replaced by the sum of the k codes most cosine-similar to it. The codes are initialised by k-means on
            the plain model's activations, then the model is fine-tuned with the bottlenecks in place under
            LM loss + --recon-coefficient * relative reconstruction error. The codebooks learn at --codebook-lr
            and the model at --model-lr, much lower (0 freezes it): the straight-through gradient the model
            gets is only an estimate, and at the codebooks' rate it wrecks the model.

            The held-out LM loss before and after is stored in the `codebooks` table (lm_loss_increase).
            A checkpoint is written every --checkpoint-seconds: after an interruption, run the same command
            again and it resumes. Files: <store>/codebooks/<name>/.
            Sites: blocks.{l}.attn.hook_out (the attention output), blocks.{l}.attn.hook_z (each head's output
            before the output projection, one codebook per head: code c is head c // --codes's) and
            blocks.{l}.mlp.hook_out.
        """),
        epilog=textwrap.dedent("""\
            examples:
              workbench codebook train --model smollm2-135m --sites blocks.3.mlp.hook_out,blocks.3.attn.hook_out --tokens 64k --store store/
              workbench codebook encode --store store/ --codebook <name> --run <harvest run>
              workbench codebook steer --store store/ --codebook <name> --site blocks.3.mlp.hook_out --code 17 --prompt "Once upon a time"
        """))
    train.add_argument("--model", required=True, help="registry name, local HF folder or hub id")
    train.add_argument("--sites", required=True, help="comma-separated sublayer outputs, e.g. blocks.3.mlp.hook_out")
    train.add_argument("--store", required=True)
    train.add_argument("--tokens", type=_int_with_suffix, default=65_536, help="fine-tuning tokens, e.g. 64k (default: 64k)")
    train.add_argument("--codes", type=int, default=1024, help="codebook size per site, or per head at attn.hook_z "
                       "(default: %(default)s)")
    train.add_argument("--k", type=int, default=8, help="codes per token per site (default: %(default)s)")
    train.add_argument("--reduce", choices=["sum", "mean"], default="sum", help="how the k codes combine (default: %(default)s)")
    train.add_argument("--corpus", default="default", help="default, a .txt/.jsonl/.parquet path, or hf:NAME (default: %(default)s)")
    train.add_argument("--text-column", default="text")
    train.add_argument("--context-len", type=int, default=128)
    train.add_argument("--batch-size", type=int, default=8, help="contexts per step (default: %(default)s)")
    train.add_argument("--codebook-lr", type=float, default=1e-3)
    train.add_argument("--model-lr", type=float, default=3e-5, help="the model's own learning rate; 0 freezes it (default: %(default)s)")
    train.add_argument("--recon-coefficient", type=float, default=0.1)
    train.add_argument("--dead-window-tokens", type=_int_with_suffix, default=0,
                       help="re-seed codes unused for this many tokens from recent activations; 0 never does (default)")
    train.add_argument("--eval-tokens", type=_int_with_suffix, default=8192, help="held out for the LM loss (default: %(default)s)")
    train.add_argument("--name", help="codebooks name; repeat it to resume (default: derived from model, sites, codes, k)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--checkpoint-seconds", type=float, default=60)
    train.set_defaults(func=_run_codebook_train)

    encode = codebook_sub.add_parser(
        "encode", help="write the codes that fire on each token of a harvest run into codebook_codes",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run the model with its codebooks over a harvest run's token contexts and store one\n"
                    "(token, site, code) row per code that fires, keyed by the run's token ids.",
        epilog=textwrap.dedent("""\
            then, for example:
              workbench sql store/ "SELECT t.token, count(*) AS n FROM codebook_codes c JOIN tokens t USING (run, token_id)
                                    WHERE c.codebook = '<name>' AND c.site = 'blocks.3.mlp.hook_out' AND c.code = 17
                                    GROUP BY t.token ORDER BY n DESC LIMIT 10"
        """))
    encode.add_argument("--store", required=True)
    encode.add_argument("--codebook", required=True)
    encode.add_argument("--run", required=True, help="a harvest run of the same model")
    encode.add_argument("--batch-size", type=int, default=8)
    encode.set_defaults(func=_run_codebook_encode)

    steer = codebook_sub.add_parser(
        "steer", help="generate with a code forced on, and count how often the target behaviour appears",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.dedent("""\
            Sample --samples continuations of the prompt twice with the same seeds: as the model is, and with
            the code forced on at the site at every position (--mode swap: in place of the weakest of its k
            codes; --mode only: in all k slots). A continuation shows the target behaviour if it contains one
            of the --targets strings; by default they are the 5 tokens with a letter or digit that the code
            fires on most (needs `workbench codebook encode` first).
        """),
        epilog="example:\n  workbench codebook steer --store store/ --codebook <name> --site blocks.3.mlp.hook_out --code 17 "
               "--prompt \"Once upon a time\" --targets \" dragon, dragons\"")
    steer.add_argument("--store", required=True)
    steer.add_argument("--codebook", required=True)
    steer.add_argument("--site", required=True)
    steer.add_argument("--code", type=int, required=True)
    steer.add_argument("--prompt", required=True)
    steer.add_argument("--targets", help="comma-separated strings that count as the behaviour (default: the code's top tokens)")
    steer.add_argument("--mode", choices=["swap", "only"], default="swap",
                       help="swap: the code replaces the weakest of the k codes; only: it fills all k slots, so the site "
                            "outputs nothing else (a stronger push) (default: %(default)s)")
    steer.add_argument("--samples", type=int, default=16)
    steer.add_argument("--max-new-tokens", type=int, default=24)
    steer.add_argument("--seed", type=int, default=0)
    steer.set_defaults(func=_run_codebook_steer)


def _run_codebook_train(args) -> int:
    from workbench.codebooks.finetune import FinetuneSettings
    from workbench.codebooks.train import CodebookTrainConfig, run_codebook_train

    sites = [site.strip() for site in args.sites.split(",") if site.strip()]
    settings = FinetuneSettings(codebook_lr=args.codebook_lr, model_lr=args.model_lr,
                                recon_coefficient=args.recon_coefficient, dead_window_tokens=args.dead_window_tokens,
                                checkpoint_seconds=args.checkpoint_seconds)
    record = run_codebook_train(CodebookTrainConfig(
        store=args.store, model=args.model, sites=sites, tokens=args.tokens, n_codes=args.codes, k=args.k,
        reduce=args.reduce, corpus=args.corpus, text_column=args.text_column, context_len=args.context_len,
        batch_size=args.batch_size, eval_tokens=args.eval_tokens, finetune=settings, name=args.name,
        seed=args.seed)).codebook
    name, before, after = record.name, record.lm_loss_original, record.lm_loss_codebooks
    bypassed, recon = record.lm_loss_bypassed, record.recon_error
    print(f"Codebooks '{name}' are trained. Held-out LM loss: original model {before:.4f}, with codebooks {after:.4f} "
          f"({after - before:+.4f} nats).\nThe fine-tuned model with its codebooks bypassed: {bypassed:.4f}, so the codebooks "
          f"themselves cost {after - bypassed:+.4f} nats. Relative reconstruction error {recon:.3f}.\n"
          f"Next: workbench codebook encode --store {args.store} --codebook {name} --run <a harvest run of this model>")
    return 0


def _run_codebook_encode(args) -> int:
    from workbench.codebooks.train import CodebookEncodeConfig, run_codebook_encode

    result = run_codebook_encode(CodebookEncodeConfig(store=args.store, codebook=args.codebook, run=args.run,
                                                      batch_size=args.batch_size))
    print(f"Wrote {result.rows:,} (token, site, code) rows for '{result.codebook.name}' on run '{result.run}' "
          "(table codebook_codes).")
    return 0


def _run_codebook_steer(args) -> int:
    from workbench.codebooks.steer import SteerConfig, run_codebook_steer

    targets = [t for t in args.targets.split(",") if t.strip()] if args.targets else []
    result = run_codebook_steer(SteerConfig(store=args.store, codebook=args.codebook, site=args.site, code=args.code,
                                            prompt=args.prompt, targets=targets, mode=args.mode, samples=args.samples,
                                            max_new_tokens=args.max_new_tokens, seed=args.seed))
    print(f"targets: {', '.join(repr(t) for t in result.targets)}")
    for label, texts in (("baseline", result.baseline), ("steered", result.steered)):
        print(f"\n{label}:")
        for text in texts[:5]:
            print(f"  {args.prompt}|{text!r}")
    print(f"\nshare showing a target: baseline {result.baseline_rate:.2f}, steered {result.steered_rate:.2f} "
          f"({args.samples} samples each, same seeds)")
    return 0


# -- app -----------------------------------------------------------------------------

def _add_app(sub) -> None:
    p = sub.add_parser(
        "app", help="explore the store in the browser (Streamlit)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Serve the workbench app on this machine: overview, feature explorer, text inspector, "
                    "layer contributions, circuits and a read-only SQL console. It reads the last committed "
                    "state, so it keeps working while a harvest or training run writes to the same store.",
        epilog=textwrap.dedent("""\
            examples:
              workbench app --store store/                 # then open http://localhost:8501
              workbench app --store store/ --port 8600
            a feature page has a stable address to share:
              http://localhost:8501/features?dict=demo-topk&feature=123
        """),
    )
    p.add_argument("--store", required=True, help="the store directory to explore")
    p.add_argument("--port", type=int, default=8501, help="port to serve on (default: %(default)s)")
    p.add_argument("--host", default="localhost",
                   help="address to listen on (default: %(default)s, this machine only; 0.0.0.0 shares it on the network)")
    p.set_defaults(func=_run_app)


def _run_app(args) -> int:
    from pathlib import Path

    from workbench.store import Store

    store = Store.open_existing(args.store)  # fail here, in the terminal, rather than on an empty page
    main_script = Path(__file__).resolve().parent.parent / "app" / "main.py"
    if not main_script.exists():
        raise WorkbenchError(f"The app's files are not next to this installation ({main_script} is missing). The app "
                             "ships with the source: clone the repository and `pip install -e .` from it.")
    os.environ["WORKBENCH_STORE"] = str(store.root)
    print(f"workbench app: http://{args.host}:{args.port}  (store {store.root}; Ctrl-C stops it)", file=sys.stderr)
    command = [sys.executable, "-m", "streamlit", "run", str(main_script), "--server.port", str(args.port),
               "--server.address", args.host, "--server.headless", "true", "--browser.gatherUsageStats", "false"]
    sys.stdout.flush()
    os.execv(sys.executable, command)  # Streamlit takes over this process, so Ctrl-C and signals reach it directly


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="workbench",
        description="Mechanistic-interpretability workbench: harvest activations into a DuckDB store and query them.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{harvest,store,sql,probe,train,eval,encode,import,circuit,codebook,app,models}")
    _add_harvest(sub)
    _add_store(sub)
    _add_sql(sub)
    _add_probe(sub)
    _add_train(sub)
    _add_eval(sub)
    _add_encode(sub)
    _add_import(sub)
    _add_circuit(sub)
    _add_codebook(sub)
    _add_app(sub)
    _add_models(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except WorkbenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: everything committed so far is kept; run the same command again to resume.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
