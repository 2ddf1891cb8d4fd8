"""`workbench store info|verify|upgrade` and `workbench sql`: look after a store and query it."""

from __future__ import annotations

import sys
import textwrap

from workbench.cli.common import add_command, human_bytes, print_table
from workbench.store.commands import (
    SqlConfig,
    StoreInfoConfig,
    StoreSummary,
    UpgradeConfig,
    UpgradeResult,
    VerifyConfig,
    VerifyResult,
    run_sql,
    run_store_info,
    run_upgrade,
    run_verify,
)
from workbench.store.sql import QueryResult

POSITIONAL_STORE = {"store": ["STORE"]}


def report_info(config: StoreInfoConfig, summary: StoreSummary) -> None:
    print(
        f"Store {summary.root} (schema v{summary.schema_version}): catalog {human_bytes(summary.catalog_bytes)}, "
        f"shards {human_bytes(summary.shard_bytes)}, models {human_bytes(summary.model_bytes)}"
    )
    print("\nRuns")
    print_table(summary.runs)
    print("\nHook points (bytes per token as stored, against raw fp32)")
    print_table(summary.hook_points)
    sections = [
        ("Probe runs (tables probe_*)", summary.probe_runs),
        ("Dictionaries (latest `workbench eval` figures; empty until evaluated)", summary.dictionaries),
        (
            "Codebooks (held-out LM loss: original model, with codebooks, fine-tuned with codebooks bypassed)",
            summary.codebooks,
        ),
    ]
    for title, table in sections:
        if table.num_rows:
            print(f"\n{title}")
            print_table(table)


def report_verify(config: VerifyConfig, result: VerifyResult) -> int:
    for p in result.problems:
        print(f"DAMAGED  run={p.run} hook={p.hook} chunk={p.chunk}: {p.path} ({p.problem})")
    for part in result.part_problems:
        print(f"DAMAGED  dictionary={part.dictionary} feature bucket {part.bucket}: {part.path} ({part.problem})")
    damaged = sorted({part.dictionary for part in result.part_problems})
    if damaged:
        if config.drop_corrupt:
            print(f"Unregistered the encoding of {', '.join(damaged)}. Re-run `workbench encode --dict NAME` for each.")
        else:
            print(
                f"{len(result.part_problems)} of {result.parts_checked} feature parts are damaged. Run again with "
                "--drop-corrupt, then re-run `workbench encode --dict NAME` for " + ", ".join(damaged) + "."
            )
    if not result.problems:
        parts = f" and all {result.parts_checked} feature parts" if result.parts_checked and not damaged else ""
        print(f"All {result.checked} shards{parts} match their checksums.")
        return 1 if damaged and not config.drop_corrupt else 0
    if config.drop_corrupt:
        print(
            f"Unregistered {result.dropped_chunks} damaged chunk(s). Re-run the original harvest command "
            "(same --run) to regenerate them."
        )
        return 0
    print(
        f"{len(result.problems)} of {result.checked} shards are damaged. Run again with --drop-corrupt, then re-run "
        "the harvest command with the same --run to regenerate them."
    )
    return 1


def report_upgrade(config: UpgradeConfig, result: UpgradeResult) -> None:
    if result.old_version != result.new_version:
        print(f"Store {config.store}: schema v{result.old_version} -> v{result.new_version}.")
    else:
        print(f"Store {config.store} is already at schema v{result.new_version}.")


def report_sql(config: SqlConfig, result: QueryResult) -> None:
    print_table(result.table, max_rows=config.max_rows)
    if result.truncated:
        print(f"(cut at {config.max_rows} rows; raise --max-rows to see more)", file=sys.stderr)


def add_store(sub, name: str, help_text: str) -> None:
    parser = sub.add_parser(name, help=help_text, description=help_text[:1].upper() + help_text[1:] + ".")
    store_sub = parser.add_subparsers(dest="store_command", required=True, metavar="{info,verify,upgrade}")
    add_command(
        store_sub,
        "info",
        "runs, hook points, token counts and sizes",
        StoreInfoConfig,
        run_store_info,
        report_info,
        flags=POSITIONAL_STORE,
        epilog="example:\n  workbench store info store/",
    )
    add_command(
        store_sub,
        "verify",
        "check every shard against its recorded SHA-256",
        VerifyConfig,
        run_verify,
        report_verify,
        flags=POSITIONAL_STORE,
        description="Check every committed shard file against the SHA-256 and row count recorded when it was "
        "committed. With --drop-corrupt, damaged chunks are unregistered so that re-running the "
        "harvest command regenerates them.",
        epilog="examples:\n  workbench store verify store/\n  workbench store verify store/ --drop-corrupt",
    )
    add_command(
        store_sub,
        "upgrade",
        "migrate a store written by an older workbench to the current schema",
        UpgradeConfig,
        run_upgrade,
        report_upgrade,
        flags=POSITIONAL_STORE,
        description="Migrate a store written by an older workbench to the current schema, in place and in "
        "one transaction: all data is kept, and a failed upgrade leaves the store as it was.",
    )


SQL_EPILOG = textwrap.dedent("""\
    tables and views (documented in store/README.md):
      runs, documents, tokens, hook_points, shards, schema_info, activations (view over the shards),
      dictionaries, dictionary_evals, feature_acts, feature_stats, probe_*, circuit_*, codebooks, codebook_codes

    examples:
      workbench sql store/ "SELECT run, status, n_tokens FROM runs"
      workbench sql store/ "SELECT hook, count(*) AS tokens FROM activations GROUP BY hook"
      workbench sql store/ "SELECT t.token, list_max(a.act) AS max_dim FROM activations a
                            JOIN tokens t USING (run, token_id)
                            WHERE a.hook = 'blocks.6.hook_out' ORDER BY max_dim DESC LIMIT 10"
""")


def add_sql(sub, name: str, help_text: str) -> None:
    add_command(
        sub,
        name,
        help_text,
        SqlConfig,
        run_sql,
        report_sql,
        flags=POSITIONAL_STORE | {"query": ["QUERY"]},
        description="Run one read-only SQL statement against a store and print the result as a table. "
        "It sees the last committed state, also while a harvest writes.",
        epilog=SQL_EPILOG,
    )


COMMANDS = {"store": add_store, "sql": add_sql}
