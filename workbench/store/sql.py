"""Read-only SQL against a store, for the CLI and the app.

Three layers of defence, so nothing typed can change the store or read outside it:
1. the statement is parsed and must be a single SELECT (SHOW, DESCRIBE, SUMMARIZE
   and WITH ... SELECT parse as SELECT) or EXPLAIN;
2. the connection is read-only, so the catalog cannot change;
3. the connection is sandboxed to the store's shard files, with the configuration
   locked, so COPY, ATTACH, INSTALL/LOAD and read_csv/read_text of other paths fail.
Long queries are interrupted after a time limit, and results are cut at a row limit.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import duckdb
import pyarrow as pa

from workbench.errors import ReadOnlySqlError
from workbench.store.catalog import Store

_ALLOWED = {duckdb.StatementType.SELECT: "SELECT", duckdb.StatementType.EXPLAIN: "EXPLAIN"}


@dataclass
class QueryResult:
    table: pa.Table
    truncated: bool  # more rows existed than max_rows


def check_read_only(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as exc:
        raise ReadOnlySqlError(f"SQL does not parse: {exc}") from exc
    if len(statements) != 1:
        raise ReadOnlySqlError(f"Give exactly one statement; this has {len(statements)}. Separate queries must run separately.")
    kind = statements[0].type
    if kind not in _ALLOWED:
        name = str(kind).split(".")[-1]
        raise ReadOnlySqlError(
            f"{name} statements are refused: SQL here is read-only. Use SELECT (or SHOW, DESCRIBE, SUMMARIZE, EXPLAIN). "
            "Data changes go through workbench commands (harvest, train, ...)."
        )


def run_query(store: Store, sql: str, max_rows: int = 10_000, timeout_s: float = 30.0) -> QueryResult:
    with store.reader(sandboxed=True) as con:
        check_read_only(con, sql)
        timer = threading.Timer(timeout_s, con.interrupt)
        timer.start()
        try:
            reader = con.sql(sql).to_arrow_reader(min(max_rows + 1, 100_000))
            batches, n = [], 0
            for batch in reader:
                batches.append(batch)
                n += batch.num_rows
                if n > max_rows:
                    break
            table = pa.Table.from_batches(batches, schema=reader.schema)
        except duckdb.InterruptException as exc:
            raise ReadOnlySqlError(f"Query stopped after the {timeout_s:.0f}s time limit. Narrow it (WHERE, LIMIT) and retry.") from exc
        except duckdb.PermissionException as exc:
            raise ReadOnlySqlError(f"Refused: queries may read only this store's own tables and shards ({exc}).") from exc
        except duckdb.Error as exc:
            message = str(exc)
            if "parquet" in message.lower() and "shards/" in message:
                message += "\nA shard file looks damaged: run `workbench store verify STORE` to find and repair it."
            raise ReadOnlySqlError(message) from exc
        finally:
            timer.cancel()
    return QueryResult(table=table.slice(0, max_rows), truncated=table.num_rows > max_rows)


# Offered by the app's SQL console; each runs on any store that has the data it names.
EXAMPLE_QUERIES = {
    "What the store holds": "SELECT run, model, n_tokens, hooks, status FROM runs",
    "Dictionaries and their latest evaluation":
        "SELECT d.name, d.arch, d.hook, d.n_latents, d.k, e.fvu, e.l0, e.ce_loss_score\n"
        "FROM dictionaries d LEFT JOIN dictionary_evals e ON e.dictionary = d.name\nORDER BY d.name",
    "Densest features of each dictionary":
        "SELECT dictionary, feature, n_active, round(density, 5) AS density, round(max, 3) AS max\n"
        "FROM feature_stats\nQUALIFY row_number() OVER (PARTITION BY dictionary ORDER BY density DESC) <= 10",
    "Top contexts of one feature (edit the dictionary and feature)":
        "SELECT a.value, t.token, d.source, t.context_id, t.position\n"
        "FROM feature_acts a JOIN tokens t USING (run, token_id) JOIN documents d USING (run, doc_id)\n"
        "WHERE a.dictionary = (SELECT min(name) FROM dictionaries) AND a.feature = 0\n"
        "ORDER BY a.value DESC LIMIT 20",
    "Features that fire on a token":
        "SELECT a.dictionary, a.feature, count(*) AS n, round(avg(a.value), 3) AS mean_value\n"
        "FROM feature_acts a JOIN tokens t USING (run, token_id)\n"
        "WHERE trim(t.token) = 'the'\nGROUP BY ALL ORDER BY n DESC LIMIT 20",
    "Codebooks and what they cost in LM loss":
        "SELECT name, model, sites, n_codes, k, round(lm_loss_original, 4) AS lm_loss_original,\n"
        "       round(lm_loss_codebooks, 4) AS lm_loss_codebooks, round(lm_loss_increase, 4) AS increase\nFROM codebooks",
    "Contexts of one code (edit `pick` to choose the code)":
        "WITH pick AS (SELECT codebook, site, mode(code) AS code FROM codebook_codes\n"
        "              GROUP BY ALL ORDER BY codebook, site LIMIT 1)\n"
        "SELECT c.site, c.code, c.rank, t.token, t.context_id, t.position, d.source\n"
        "FROM codebook_codes c JOIN pick USING (codebook, site, code)\n"
        "JOIN tokens t USING (run, token_id) LEFT JOIN documents d USING (run, doc_id)\nLIMIT 20",
    "Codes that fire on a token":
        "SELECT c.codebook, c.site, c.code, count(*) AS n\n"
        "FROM codebook_codes c JOIN tokens t USING (run, token_id)\n"
        "WHERE trim(t.token) = 'the'\nGROUP BY ALL ORDER BY n DESC LIMIT 20",
    "Code purity: the share of each code's firings on its most common token":
        "SELECT codebook, site, code, sum(n)::BIGINT AS firings, max(n) / sum(n) AS purity, arg_max(token, n) AS token\n"
        "FROM (SELECT c.codebook, c.site, c.code, t.token, count(*) AS n\n"
        "      FROM codebook_codes c JOIN tokens t USING (run, token_id) GROUP BY ALL)\n"
        "GROUP BY ALL HAVING sum(n) >= 20 ORDER BY purity DESC LIMIT 20",
    "Most frequent tokens": "SELECT token, count(*) AS n FROM tokens GROUP BY token ORDER BY n DESC LIMIT 20",
    "Activation norms per hook (reads the shards)":
        "SELECT hook, count(*) AS tokens, round(avg(sqrt(list_sum(list_transform(act, lambda x: x * x)))), 3) AS mean_norm\n"
        "FROM activations GROUP BY hook ORDER BY hook",
    "Depth scores of the probe runs": "SELECT * FROM probe_depth_scores ORDER BY probe_run, measure",
    "Logit lens by layer": "SELECT probe_run, layer, round(kl_mean, 4) AS kl, round(top5_overlap_mean, 3) AS top5\n"
                           "FROM probe_logit_lens ORDER BY probe_run, layer",
}
