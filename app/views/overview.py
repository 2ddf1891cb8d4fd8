"""Overview: what the store holds, each item linked to the page that explores it."""

import streamlit as st

from workbench import plots
from workbench.store import results

from common import PAGES, open_store, stamp, store

st.title("Overview")
current = store()


@st.cache_data(show_spinner=False, max_entries=16)
def overview(path: str, stamp: int) -> results.Overview:
    return results.overview(open_store(path))


tables = overview(str(current.root), stamp(current))
runs, hooks, dictionaries, probes = tables.runs, tables.hooks, tables.dictionaries, tables.probes

columns = st.columns(5)
columns[0].metric("Harvest runs", len(runs))
columns[1].metric("Tokens", f"{int(runs['n_tokens'].sum()) if len(runs) else 0:,}")
columns[2].metric(
    "Activation rows",
    f"{int(hooks['tokens'].sum()) if len(hooks) else 0:,}",
    help="token x hook rows in committed shards; grows chunk by chunk while a harvest runs",
)
columns[3].metric("Dictionaries", len(dictionaries))
columns[4].metric("Probe runs", len(probes))

st.subheader("Harvest runs")
if runs.empty:
    st.info(
        f"The store is empty. Harvest activations first:\n\n```\nworkbench harvest --model smollm2-135m "
        f"--hooks blocks.6.hook_out --corpus default --tokens 50000 --store {current.root}\n```"
    )
else:
    st.dataframe(runs, hide_index=True)
    st.caption("Hook points and their committed shards")
    st.dataframe(hooks, hide_index=True, column_config={"mb": st.column_config.NumberColumn("MB", format="%.1f")})

st.subheader("Dictionaries")
if dictionaries.empty:
    st.info(
        f"No dictionary yet. Train, evaluate and encode one:\n\n```\nworkbench train --store {current.root} "
        f"--hook blocks.6.hook_out --arch topk --k 32 --latents 4608 --tokens 2M --name my-sae\n"
        f"workbench eval --store {current.root} --dict my-sae\nworkbench encode --store {current.root} --dict my-sae\n```"
    )
else:
    dictionaries.insert(
        0,
        "page",
        [
            "features?dict=" + name if encoded else None
            for name, encoded in zip(dictionaries["name"], dictionaries["encoded"])
        ],
    )
    st.dataframe(
        dictionaries,
        hide_index=True,
        column_config={
            "page": st.column_config.LinkColumn("Explore", display_text="features →"),
            "fvu": st.column_config.NumberColumn(
                "FVU", format="%.3f", help="eval FVU (docs/ARCHITECTURE.md definition)"
            ),
            "l0": st.column_config.NumberColumn("L0", format="%.1f"),
            "dead_fraction": st.column_config.NumberColumn("dead", format="%.3f"),
            "ce_loss_score": st.column_config.NumberColumn("CE-loss score", format="%.3f"),
            "delta_ce": st.column_config.NumberColumn("ΔCE (nats)", format="%.4f"),
            "train_fvu": st.column_config.NumberColumn("train FVU", format="%.3f"),
        },
    )
    missing = dictionaries[(dictionaries["status"] == "complete") & ~dictionaries["encoded"]]["name"].tolist()
    if missing:
        st.caption(
            "Not encoded yet (their feature pages need it): "
            + "; ".join(f"`workbench encode --store {current.root} --dict {n}`" for n in missing)
        )
    unevaluated = dictionaries[dictionaries["fvu"].isna()]["name"].tolist()
    if unevaluated:
        st.caption(
            "No evaluation yet (FVU, CE-loss score): "
            + "; ".join(f"`workbench eval --store {current.root} --dict {n}`" for n in unevaluated)
        )


@st.cache_data(show_spinner=False, max_entries=16)
def evaluations(path: str, stamp: int):
    import pandas as pd

    from workbench.evals.table import band_rows, display_columns, score_table

    table = score_table(open_store(path))
    return pd.DataFrame(display_columns(table)), pd.DataFrame(band_rows(table))


if not dictionaries.empty:
    st.subheader("Evaluations")
    shown, bands = evaluations(str(current.root), stamp(current))
    st.dataframe(shown, hide_index=True)
    st.caption(
        "Mean ± standard deviation over each dictionary and its seed siblings (NAME-seed1, ...). More benchmarks and "
        f"seeds: `workbench eval --store {current.root} --dict NAME --benchmarks all --seeds 3`; autointerp: "
        f"`workbench explain --store {current.root} --dict NAME`."
    )
    if len(bands):
        st.plotly_chart(plots.score_bands(bands), key="score-bands")


def linked_runs(title: str, frame, key: str, page: str, param: str, command: str) -> None:
    """A table of runs, each linked to the page that draws it, or the command that makes the first one."""
    st.subheader(title)
    if frame.empty:
        st.info(f"Nothing here yet:\n\n```\n{command}\n```")
        return
    frame.insert(0, "page", [f"{page}?{param}={name}" for name in frame[key]])
    st.dataframe(
        frame, hide_index=True, column_config={"page": st.column_config.LinkColumn("Explore", display_text=f"{page} →")}
    )


linked_runs(
    "Depth probes",
    probes,
    "probe_run",
    "layers",
    "probe",
    f"workbench probe depth --model smollm2-135m --tokens 2048 --store {current.root}",
)
linked_runs(
    "Circuit analyses",
    tables.circuits,
    "circuit_run",
    "circuits",
    "run",
    f"workbench circuit patch --task ioi --model smollm2-135m --store {current.root}",
)
linked_runs(
    "Codebooks",
    tables.codebooks,
    "name",
    "codes",
    "codebook",
    f"workbench codebook train --model smollm2-135m --sites blocks.6.mlp.hook_out --tokens 32k --store {current.root}",
)

st.page_link(PAGES["sql"], label="Query anything with SQL →")
