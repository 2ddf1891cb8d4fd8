"""Writes and reads of `codebook_codes`: the codes that fired on each token of a harvest run.

    replace_codes(store, codebook, run, table)     a codebook's codes on a run, replacing any earlier ones
    encoded_runs(store, codebook)                  runs with stored codes
    code_table(store, codebook, run, site)         per code at a site: firings, density, similarity, top token, purity
    code_hits(store, codebook, run, site, code, n, context_len)   its most similar firings, one per context
    code_window_values(codebook, run, site, code)  the query context_windows shades a code's windows with
    code_tokens(store, codebook, site, code, n, run)  the tokens a code fires on most
"""

from __future__ import annotations

import pyarrow as pa

from workbench.store.catalog import Store
from workbench.store.records import delete_rows, insert_arrow


def replace_codes(store: Store, codebook: str, run: str, table: pa.Table) -> None:
    """Replace the rows of (codebook, run) with `table` (columns named as codebook_codes'), in one transaction."""
    with store.transaction() as con:
        delete_rows(con, "codebook_codes", codebook=codebook, run=run)
        insert_arrow(con, "codebook_codes", table)


def encoded_runs(store: Store, codebook: str) -> list[str]:
    with store.reader() as con:
        return [r[0] for r in con.execute("SELECT DISTINCT run FROM codebook_codes WHERE codebook = ? ORDER BY run",
                                          [codebook]).fetchall()]


def code_table(store: Store, codebook: str, run: str, site: str) -> pa.Table:
    """Per code that fires at `site`: firings, share of tokens, mean similarity, its commonest token and purity
    (the share of its firings on that token)."""
    with store.reader() as con:
        return con.sql(
            "WITH per_token AS (SELECT c.code, t.token, count(*) AS n, avg(c.similarity) AS similarity "
            "  FROM codebook_codes c JOIN tokens t USING (run, token_id) "
            "  WHERE c.codebook = ? AND c.run = ? AND c.site = ? GROUP BY ALL), "
            "total AS (SELECT count(DISTINCT token_id) AS n FROM codebook_codes "
            "  WHERE codebook = ? AND run = ? AND site = ?) "
            "SELECT code, sum(n)::BIGINT AS firings, sum(n) / any_value((SELECT n FROM total)) AS density, "
            "  sum(similarity * n) / sum(n) AS mean_similarity, arg_max(token, n) AS top_token, "
            "  max(n) / sum(n) AS purity FROM per_token GROUP BY code ORDER BY firings DESC, code",
            params=[codebook, run, site, codebook, run, site]).to_arrow_table()


def code_hits(store: Store, codebook: str, run: str, site: str, code: int, n: int,
              context_len: int) -> list[tuple[int, float]]:
    """(token_id, similarity) of the code's n most similar firings, at most one per context of `context_len`."""
    with store.reader() as con:
        return con.execute(
            "SELECT token_id, similarity FROM codebook_codes WHERE codebook = ? AND run = ? AND site = ? AND code = ? "
            "QUALIFY row_number() OVER (PARTITION BY token_id // ? ORDER BY similarity DESC) = 1 "
            "ORDER BY similarity DESC, token_id LIMIT ?", [codebook, run, site, code, context_len, n]).fetchall()


def code_window_values(codebook: str, run: str, site: str, code: int) -> tuple[str, list]:
    """(query, params) selecting (token_id, similarity) of the code on the window tokens that
    features.context_windows registers as `window_ids`."""
    return ("SELECT token_id, max(similarity) FROM codebook_codes WHERE codebook = ? AND run = ? "
            "AND site = ? AND code = ? AND token_id IN (SELECT token_id FROM window_ids) GROUP BY token_id",
            [codebook, run, site, code])


def code_tokens(store: Store, codebook: str, site: str, code: int, n: int = 10, run: str | None = None) -> pa.Table:
    """The tokens a code fires on most (BOS left out), with counts; over every encoded run unless `run` is given."""
    with store.reader() as con:
        return con.sql(
            "SELECT t.token, count(*) AS firings FROM codebook_codes c JOIN tokens t USING (run, token_id) "
            "WHERE c.codebook = ? AND c.site = ? AND c.code = ? AND t.doc_id IS NOT NULL AND (? IS NULL OR c.run = ?) "
            "GROUP BY t.token ORDER BY firings DESC, t.token LIMIT ?",
            params=[codebook, site, code, run, run, n]).to_arrow_table()
