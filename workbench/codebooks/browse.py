"""Reading stored codes back: a codebook's summary, a code's contexts, default steering targets.

The app's Codes page and scripts both use these; everything reads `codebooks` and the rows that
`workbench codebook encode` wrote to `codebook_codes` (the queries themselves are workbench/store/codes.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from safetensors import safe_open

from workbench.codebooks.attach import check_code
from workbench.features import Context, context_windows
from workbench.store import Store, lookups
from workbench.store import codes as stored_codes
from workbench.store.records import CodebookRecord


@dataclass
class CodebookSummary:
    """Finished codebooks' catalog record, plus what the catalog row does not hold."""

    codebook: CodebookRecord
    encoded_runs: list[str]  # runs with stored codes
    total_codes: dict[str, int]  # per site: n_codes, or n_heads * n_codes at a per-head site (attn.hook_z)

    def head_of(self, site: str, code: int) -> int | None:
        """At a per-head site, the head a code belongs to."""
        n_codes = self.codebook.n_codes
        return code // n_codes if self.total_codes[site] > n_codes else None


def codebook_summary(store: Store, name: str) -> CodebookSummary:
    record = lookups.completed_codebook(store, name)
    # The codebook tensors' shapes say how many codes each site has; safe_open reads only the file's header.
    with safe_open(store.root / record.path / "final" / "codebooks.safetensors", "pt") as weights:
        total = {
            site: weights.get_slice(f"bottlenecks.{site.replace('.', '_')}.codebook").get_shape()[0]
            for site in record.sites
        }
    return CodebookSummary(record, stored_codes.encoded_runs(store, name), total)


def code_contexts(
    store: Store,
    summary: CodebookSummary,
    run: str,
    site: str,
    code: int,
    n: int = 10,
    before: int = 16,
    after: int = 4,
) -> list[Context]:
    """The code's n most similar firings, at most one per context, each with its window; a token's value is the
    code's similarity there (0 where the code did not fire)."""
    check_code(site, code, summary.total_codes)
    context_len = lookups.run(store, run).context_len
    hits = stored_codes.code_hits(store, summary.codebook.name, run, site, code, n, context_len)
    return context_windows(
        store,
        run,
        context_len,
        hits,
        before,
        after,
        *stored_codes.code_window_values(summary.codebook.name, run, site, code),
    )


def default_targets(store: Store, name: str, site: str, code: int, n: int = 5) -> list[str]:
    """Steering targets: the code's n commonest tokens that hold a letter or digit. Punctuation and whitespace
    occur in almost any continuation, so they would count every sample as a hit."""
    tokens = stored_codes.code_tokens(store, name, site, code, n=50).column("token").to_pylist()
    return [token for token in tokens if token and any(c.isalnum() for c in token)][:n]
