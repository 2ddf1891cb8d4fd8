"""Layer contributions: the depth-usage probe results (workbench/probes) as interactive plots."""

import streamlit as st

from workbench import plots
from workbench.store import results

from common import open_store, pick, stamp, store

st.title("Layer contributions")
current = store()


@st.cache_data(show_spinner=False, max_entries=16)
def probe_runs(path: str, stamp: int):
    return results.probe_runs(open_store(path))


@st.cache_data(show_spinner=False, max_entries=32)
def probe_tables(path: str, stamp: int, probe_run: str) -> dict:
    return results.probe_tables(open_store(path), probe_run)


runs = probe_runs(str(current.root), stamp(current))
if runs.empty:
    st.info(
        "No probe results in this store yet. Measure how much each layer contributes:\n\n"
        f"```\nworkbench probe depth --model smollm2-135m --tokens 2048 --store {current.root}\n```\n\n"
        "and compare two models layer by layer with `workbench probe maps` (see its --help)."
    )
    st.stop()

chosen = pick("Probe run", runs["probe_run"].tolist(), "probe")
info = runs.set_index("probe_run").loc[chosen]
st.caption(
    f"{info['kind']} probe of `{info['model']}`"
    + (f" → `{info['target_model']}`" if info["kind"] == "linear_maps" else "")
    + f" on {int(info['n_tokens']):,} tokens of '{info['task']}'"
)
data = probe_tables(str(current.root), stamp(current), chosen)

if info["kind"] == "linear_maps":
    st.subheader("Linear-map error between layers (lower = more alike)")
    st.plotly_chart(plots.linear_map_errors(data["probe_linear_maps"], info["model"], info["target_model"]), key="maps")
    st.stop()

scores = data["probe_depth_scores"]
if not scores.empty:
    st.subheader("Depth scores")
    st.caption("The effect-weighted mean layer index of each measure; relative = divided by the last layer index.")
    st.dataframe(scores, hide_index=True)

sublayer, skip, output, lens = (
    data[t] for t in ("probe_sublayer", "probe_skip_layers", "probe_skip_output", "probe_logit_lens")
)
norms, cosines, skipping, lens_tab = st.tabs(["Norm ratios", "Cosines", "Layer skipping", "Logit lens"])
with norms:
    st.plotly_chart(plots.norm_ratios(sublayer), key="norms")
with cosines:
    st.plotly_chart(plots.sublayer_cosines(sublayer), key="cosines")
with skipping:
    if skip.empty:
        st.info("This probe run skipped no layers (it was run with --skip-tokens 0).")
    else:
        st.plotly_chart(plots.skip_heatmap(skip), key="skip-heatmap")
        st.plotly_chart(plots.skip_output_kl(output), key="skip-output")
with lens_tab:
    if lens.empty:
        st.info("This probe run has no logit lens (it was run with --lens-tokens 0).")
    else:
        st.plotly_chart(plots.logit_lens(lens), key="lens")

with st.expander("Raw tables"):
    for table, frame in data.items():
        if not frame.empty:
            st.caption(table)
            st.dataframe(frame, hide_index=True)
