"""Reading stored codes back: a codebook's summary, its codes per site, a code's contexts and tokens.

The app's Codes page and scripts both use these; everything reads `codebooks` and the rows that
`workbench codebook encode` wrote to `codebook_codes`.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
from safetensors import safe_open

from workbench.codebooks.attach import check_code
from workbench.codebooks.train import completed_codebooks
from workbench.features import Context, context_windows
from workbench.store import Store


@dataclass
class CodebookSummary:
    name: str
    model: str
    sites: list[str]
    n_codes: int
    k: int
    lm_loss_original: float | None
    lm_loss_codebooks: float | None
    lm_loss_bypassed: float | None
    encoded_runs: list[str]  # runs with stored codes
    total_codes: dict[str, int]  # per site: n_codes, or n_heads * n_codes at a per-head site (attn.hook_z)

    def head_of(self, site: str, code: int) -> int | None:
        """At a per-head site, the head a code belongs to."""
        return code // self.n_codes if self.total_codes[site] > self.n_codes else None


def codebook_summary(store: Store, name: str) -> CodebookSummary:
    record = completed_codebooks(store, name)
    with store.reader() as con:
        losses = con.execute("SELECT lm_loss_original, lm_loss_codebooks, lm_loss_bypassed FROM codebooks WHERE name = ?",
                             [name]).fetchone()
        runs = [r[0] for r in con.execute("SELECT DISTINCT run FROM codebook_codes WHERE codebook = ? ORDER BY run",
                                          [name]).fetchall()]
    # The codebook tensors' shapes say how many codes each site has; safe_open reads only the file's header.
    with safe_open(store.root / record["path"] / "final" / "codebooks.safetensors", "pt") as weights:
        total = {site: weights.get_slice(f"bottlenecks.{site.replace('.', '_')}.codebook").get_shape()[0]
                 for site in record["sites"]}
    return CodebookSummary(name, record["model"], list(record["sites"]), record["n_codes"], record["k"], *losses, runs,
                           total)


def code_table(store: Store, name: str, run: str, site: str) -> pa.Table:
    """Per code that fires at `site`: firings, share of tokens, mean similarity, its commonest token and purity
    (the share of its firings on that token)."""
    with store.reader() as con:
        return con.sql(
            "WITH per_token AS (SELECT c.code, t.token, count(*) AS n, avg(c.similarity) AS similarity "
            "  FROM codebook_codes c JOIN tokens t USING (run, token_id) "
            "  WHERE c.codebook = ? AND c.run = ? AND c.site = ? GROUP BY ALL), "
            "total AS (SELECT count(DISTINCT token_id) AS n FROM codebook_codes WHERE codebook = ? AND run = ? AND site = ?) "
            "SELECT code, sum(n)::BIGINT AS firings, sum(n) / any_value((SELECT n FROM total)) AS density, "
            "  sum(similarity * n) / sum(n) AS mean_similarity, arg_max(token, n) AS top_token, "
            "  max(n) / sum(n) AS purity FROM per_token GROUP BY code ORDER BY firings DESC, code",
            params=[name, run, site, name, run, site]).to_arrow_table()


def code_contexts(store: Store, summary: CodebookSummary, run: str, site: str, code: int, n: int = 10,
                  before: int = 16, after: int = 4) -> list[Context]:
    """The code's n most similar firings, at most one per context, each with its window; a token's value is the
    code's similarity there (0 where the code did not fire)."""
    check_code(site, code, summary.total_codes)
    with store.reader() as con:
        context_len = con.execute("SELECT context_len FROM runs WHERE run = ?", [run]).fetchone()[0]
        hits = con.execute(
            "SELECT token_id, similarity FROM codebook_codes WHERE codebook = ? AND run = ? AND site = ? AND code = ? "
            "QUALIFY row_number() OVER (PARTITION BY token_id // ? ORDER BY similarity DESC) = 1 "
            "ORDER BY similarity DESC, token_id LIMIT ?", [summary.name, run, site, code, context_len, n]).fetchall()
    return context_windows(store, run, context_len, hits, before, after,
                           "SELECT token_id, max(similarity) FROM codebook_codes WHERE codebook = ? AND run = ? "
                           "AND site = ? AND code = ? AND token_id IN (SELECT token_id FROM window_ids) GROUP BY token_id",
                           [summary.name, run, site, code])


def code_tokens(store: Store, name: str, site: str, code: int, n: int = 10, run: str | None = None) -> pa.Table:
    """The tokens a code fires on most (BOS left out), with counts; over every encoded run unless `run` is given."""
    with store.reader() as con:
        return con.sql(
            "SELECT t.token, count(*) AS firings FROM codebook_codes c JOIN tokens t USING (run, token_id) "
            "WHERE c.codebook = ? AND c.site = ? AND c.code = ? AND t.doc_id IS NOT NULL AND (? IS NULL OR c.run = ?) "
            "GROUP BY t.token ORDER BY firings DESC, t.token LIMIT ?", params=[name, site, code, run, run, n]).to_arrow_table()


def default_targets(store: Store, name: str, site: str, code: int, n: int = 5) -> list[str]:
    """Steering targets: the code's n commonest tokens that hold a letter or digit. Punctuation and whitespace
    occur in almost any continuation, so they would count every sample as a hit."""
    tokens = code_tokens(store, name, site, code, n=50).column("token").to_pylist()
    return [token for token in tokens if token and any(c.isalnum() for c in token)][:n]
