"""SQL console: read-only SQL against the store, as a table and as CSV.

All the safety lives in workbench.store.sql.run_query (the same as `workbench sql`): one
SELECT-like statement, a read-only connection sandboxed to the store's own shard files,
a time limit and a row limit. This page adds nothing that could bypass it.
"""

import streamlit as st

from workbench.errors import WorkbenchError
from workbench.store.sql import EXAMPLE_QUERIES, run_query

from common import fail, store

st.title("SQL console")
current = store()
st.caption(
    "One read-only statement (SELECT, WITH, SHOW, DESCRIBE, SUMMARIZE, EXPLAIN) against the last committed "
    "state of the store. Tables: runs, documents, tokens, hook_points, shards, activations (view), dictionaries, "
    "feature_acts, feature_stats, dictionary_evals, probe_* (see store/README.md)."
)

example = st.selectbox("Example queries", ["(write your own)", *EXAMPLE_QUERIES])
default = EXAMPLE_QUERIES.get(example, "SELECT run, model, n_tokens FROM runs")
query = st.text_area("Query", value=default, height=160, key=f"query-{example}")
left, right = st.columns(2)
max_rows = int(left.number_input("Row limit", min_value=1, max_value=100_000, value=1_000, step=100))
timeout_s = float(right.number_input("Time limit (seconds)", min_value=1, max_value=300, value=30))

if st.button("Run", type="primary") or st.session_state.get("ran-query") == query:
    st.session_state["ran-query"] = query
    try:
        with st.spinner("Running ..."):
            result = run_query(current, query, max_rows=max_rows, timeout_s=timeout_s)
    except WorkbenchError as exc:
        fail(exc)
    frame = result.table.to_pandas()
    st.dataframe(frame, hide_index=True)
    note = f"{len(frame):,} rows"
    if result.truncated:
        note += f", cut at the row limit of {max_rows:,}: raise it or narrow the query to see more"
    st.caption(note)
    st.download_button("Download CSV", frame.to_csv(index=False).encode(), file_name="query.csv", mime="text/csv")
