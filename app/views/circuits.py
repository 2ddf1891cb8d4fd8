"""Circuits: a task's activation-patching reference circuit and the circuit found from discrete codes, as
heatmaps; attribution graphs through transcoders, drawn by layer and position with their thresholds as controls."""

import json

import streamlit as st

from workbench import features as F
from workbench import plots
from workbench.circuits.attribution import InterveneConfig, run_intervene, save_graph_view
from workbench.errors import WorkbenchError
from workbench.store import results

from common import cached_record, fail, open_store, pick, stamp, store, token_strip

st.title("Circuits")
current = store()


@st.cache_data(show_spinner=False, max_entries=16)
def circuit_runs(path: str, stamp: int):
    return results.circuit_runs(open_store(path))


@st.cache_data(show_spinner=False, max_entries=16)
def circuit_tables(path: str, stamp: int, circuit_run: str) -> dict:
    return results.circuit_tables(open_store(path), circuit_run)


@st.cache_data(show_spinner=False, max_entries=16)
def attribution_graphs(path: str, stamp: int):
    return results.attribution_graphs(open_store(path))


@st.cache_data(show_spinner=False, max_entries=16)
def attribution_graph(path: str, stamp: int, graph: str) -> dict:
    return results.attribution_graph(open_store(path), graph)


@st.cache_data(show_spinner=False, max_entries=16)
def transcoder_names(path: str, stamp: int) -> list[str]:
    return results.complete_transcoder_names(open_store(path))


@st.cache_data(show_spinner=False, max_entries=64)
def feature_contexts(path: str, stamp: int, dictionary: str, feature: int) -> list:
    """A graph node's feature: its top contexts from the dictionary's encoding (empty if not encoded)."""
    source = open_store(path)
    if not F.is_encoded(source, dictionary):
        raise WorkbenchError(
            f"'{dictionary}' is not encoded yet: `workbench encode --store {path} --dict {dictionary}` "
            "shows its top activations here."
        )
    return F.top_contexts(source, cached_record(path, stamp, dictionary), feature, n=6)


def heatmap(
    frame, x: str, y: str, labels: dict, key: str, x_labels: list[str] | None = None, counts: bool = False
) -> None:
    st.plotly_chart(plots.score_heatmap(frame, x, y, labels, x_labels, counts), key=key)


runs = circuit_runs(str(current.root), stamp(current))
if runs.empty:
    st.info(
        "No circuit analysis in this store yet. Find the reference circuit of a task by activation patching:\n\n"
        f"```\nworkbench circuit patch --task ioi --model smollm2-135m --store {current.root}\n```"
    )
else:
    chosen = pick("Circuit run", runs["circuit_run"].tolist(), "run")
    info = runs.set_index("circuit_run").loc[chosen]
    prompts = json.loads(info["prompts"])
    tokens = prompts.get("position_tokens", [])
    st.caption(
        f"Activation patching on '{info['task']}' ({int(info['n_pairs'])} pairs of {int(info['seq_len'])} tokens) "
        f"in `{info['model']}`. Score = (patched − corrupted) / (clean − corrupted) of the mean {info['metric']}: "
        "1 = this activation alone restores the clean behaviour."
    )
    cols = st.columns(3)
    cols[0].metric(f"{info['metric']}, clean", f"{info['metric_clean']:.3f}")
    cols[1].metric(f"{info['metric']}, corrupted", f"{info['metric_corrupted']:.3f}")
    cols[2].metric("Time", f"{info['wall_s']:.1f} s" if info["wall_s"] == info["wall_s"] else "-")
    with st.expander("Prompt pairs"):
        st.dataframe(prompts["pairs"], hide_index=True)

    tables = circuit_tables(str(current.root), stamp(current), chosen)
    if info["method"] == "codes":
        st.subheader("Heads by codes unique to positive prompts")
        reference = info["reference_run"]
        if isinstance(reference, str):
            cols = st.columns(2)
            cols[0].metric("ROC AUC, heads", f"{info['roc_auc_heads']:.3f}")
            cols[1].metric(
                "ROC AUC, head pairs",
                f"{info['roc_auc_pairs']:.3f}" if info["roc_auc_pairs"] == info["roc_auc_pairs"] else "-",
            )
            st.caption(f"Against the patching run `{reference}`.")
            st.page_link(
                "views/circuits.py", label=f"Open the reference {reference} →", query_params={"run": reference}
            )
        heatmap(
            tables["code_heads"], "head", "layer", dict(x="head", y="layer", color="codes"), "code-heads", counts=True
        )
        st.caption("Head pairs with the most code co-occurrences unique to positives")
        st.dataframe(tables["code_pairs"], hide_index=True)
    scores = tables["scores"]
    levels = scores["level"].unique().tolist()
    if "heads" in levels:
        st.subheader("Attention heads")
        heads = scores[scores["level"] == "heads"]
        heatmap(heads, "head", "layer", dict(x="head", y="layer", color="score"), "heads")
        top = heads.reindex(heads["score"].abs().sort_values(ascending=False).index).head(10)
        st.dataframe(top[["layer", "head", "score", "metric"]], hide_index=True)
    if "layers" in levels:
        st.subheader("Residual stream by layer and position")
        heatmap(
            scores[scores["level"] == "layers"],
            "position",
            "layer",
            dict(x="position", y="layer", color="score"),
            "layers",
            tokens,
        )
    if "head-positions" in levels:
        st.subheader("Heads by position")
        by_position = scores[scores["level"] == "head-positions"].assign(
            unit=lambda f: "L" + f["layer"].astype(str) + "H" + f["head"].astype(int).astype(str)
        )
        strongest = by_position.groupby("unit")["score"].apply(lambda s: s.abs().max()).sort_values(ascending=False)
        keep = strongest.index[:20]
        heatmap(
            by_position[by_position["unit"].isin(keep)],
            "position",
            "unit",
            dict(x="position", y="head", color="score"),
            "head-positions",
            tokens,
        )
        st.caption(f"The {len(keep)} heads with the largest score at any position.")

st.divider()
st.subheader("Attribution graphs")


graphs = attribution_graphs(str(current.root), stamp(current))
transcoders = transcoder_names(str(current.root), stamp(current))
if graphs.empty:
    names = ",".join(transcoders) or "TC_L4,TC_L6"
    st.info(
        "No attribution graph yet. Build one for a prompt from transcoders (one per MLP layer; a subset is fine):\n\n"
        f'```\nworkbench circuit graph --prompt "When Mary and John went to the store, John gave a drink to" '
        f"--transcoders {names} --store {current.root}\n```\n\n"
        + (
            ""
            if transcoders
            else "Train the transcoders first, for example:\n\n"
            f"```\nworkbench train --store {current.root} --hook blocks.6.mlp.hook_in --out blocks.6.mlp.hook_out "
            f"--arch transcoder --k 32 --latents 4608 --tokens 2M\n```"
        )
    )
else:
    chosen_graph = pick("Graph", graphs["graph"].tolist(), "graph")
    row = graphs.set_index("graph").loc[chosen_graph]
    try:
        data = attribution_graph(str(current.root), stamp(current), chosen_graph)
    except WorkbenchError as exc:
        fail(exc)
    st.caption(
        f"`{row['model']}` on {row['prompt']!r}, explaining the logit of {row['target_token']!r}; "
        f"transcoders {', '.join(row['transcoders'])}. Pruned to {row['n_kept_nodes']} nodes and "
        f"{row['n_kept_edges']} links."
    )
    cols = st.columns(4)
    cols[0].metric("Target value", f"{row['target_logit']:.3f}")
    cols[1].metric("Replacement score", f"{row['replacement_score']:.3f}")
    cols[2].metric("Completeness score", f"{row['completeness_score']:.3f}")
    faithful = data["metadata"].get("faithfulness")
    cols[3].metric("Faithfulness", "n/a" if faithful is None else f"{faithful:.3f}",
                   help="Correlation of the target changes the graph predicts with those that ablating its most "
                   "influential features causes in the real model.")  # fmt: skip
    left, right = st.columns(2)
    min_share = left.slider("Hide links weaker than this share of the strongest", 0.0, 0.5, 0.02, 0.01)
    max_features = right.slider("Features shown (most influential first)", 5, 300, 60, 5)
    figure, features = plots.attribution_graph(data, min_share, max_features)
    nodes_by_id = {n["node_id"]: n for n in data["nodes"]}
    graph_side, panel = st.columns([3, 2])
    with graph_side:
        event = st.plotly_chart(figure, key="graph", on_select="rerun", selection_mode="points")
    clicked = [p.get("customdata") for p in (event.selection.points if event else []) if p.get("customdata")]
    if clicked and clicked[0] in nodes_by_id:
        st.session_state["graph-node"] = clicked[0]  # a click on the graph opens that node in the panel
    with panel:
        ordered = [n["node_id"] for n in features] + [
            i for i in nodes_by_id if i not in {f["node_id"] for f in features}
        ]
        if st.session_state.get("graph-node") not in ordered:
            st.session_state.pop("graph-node", None)
        node_id = st.selectbox("Node (or click one in the graph)", ordered, key="graph-node")
        node = nodes_by_id[node_id]
        st.markdown(f"**{node.get('clerp') or node_id}** · activation {node['activation']:.3f} · "
                    f"influence {node.get('node_influence', 0.0):.3f}")  # fmt: skip
        dictionary, feature = node.get("dictionary"), node.get("feature_index")
        if dictionary and feature is not None:
            st.page_link("views/features.py", label=f"{dictionary} · feature {feature} →",
                         query_params={"dict": dictionary, "feature": str(feature)})  # fmt: skip
            try:
                contexts = feature_contexts(str(current.root), stamp(current), dictionary, int(feature))
            except WorkbenchError as exc:
                contexts = None
                st.caption(str(exc))
            if contexts:
                scale = max(max(c.values) for c in contexts) or 1.0
                for context in contexts:
                    st.html(token_strip(context.tokens, context.values, scale, context.centre))

    st.markdown("##### Subgraph")
    saved = data.get("qParams", {})
    pinned = st.multiselect("Pinned nodes", list(nodes_by_id),
                            default=[i for i in saved.get("pinnedIds", []) if i in nodes_by_id], key="graph-pinned")  # fmt: skip
    if "graph-supernodes" not in st.session_state or st.session_state.get("graph-supernodes-of") != chosen_graph:
        st.session_state["graph-supernodes"] = [list(g) for g in saved.get("supernodes", [])]
        st.session_state["graph-supernodes-of"] = chosen_graph
    groups = st.session_state["graph-supernodes"]
    name_col, members_col, add_col = st.columns([1, 2, 1])
    group_name = name_col.text_input("Supernode name", key="graph-group-name")
    members = members_col.multiselect("Its nodes (from the pinned ones)", pinned, key="graph-group-members")
    if add_col.button("Group them", disabled=not (group_name.strip() and members)):
        groups.append([group_name.strip(), *members])
    for group in groups:
        st.caption(f"supernode **{group[0]}**: {', '.join(group[1:])}")
    if pinned:
        from workbench.circuits.export import subgraph

        sub_figure, _ = plots.attribution_graph(subgraph(data, pinned, groups), 0.0, 300)
        st.plotly_chart(sub_figure, key="subgraph")
    if st.button("Save pins and supernodes with the graph", key="graph-save"):
        try:
            save_graph_view(str(current.root), chosen_graph, pinned, groups)
        except WorkbenchError as exc:
            fail(exc)
        attribution_graph.clear()
        st.success("Saved into the graph's qParams (circuit-tracer's frontend reads them too).")

    st.markdown("##### Intervene")
    feature_ids = [i for i, n in nodes_by_id.items() if n["feature_type"] == "cross layer transcoder"]
    chosen_nodes = st.multiselect("Features to change", feature_ids,
                                  default=[i for i in pinned if i in feature_ids], key="graph-intervene-nodes")  # fmt: skip
    scale_col, generate_col, run_col = st.columns(3)
    scale = scale_col.number_input("Scale (0 ablates, -1 flips)", value=0.0, step=0.5, key="graph-scale")
    generate = generate_col.number_input("Tokens to generate", 0, 64, 8, key="graph-generate")
    if run_col.button("Run on the model", disabled=not chosen_nodes, key="graph-intervene"):
        try:
            outcome = run_intervene(InterveneConfig(chosen_graph, chosen_nodes, str(current.root), float(scale),
                                                    int(generate)))  # fmt: skip
        except WorkbenchError as exc:
            fail(exc)
        row_ = outcome.intervention
        a, b, c = st.columns(3)
        a.metric("Target before", f"{row_.value_before:.3f}")
        b.metric("Actual change", f"{row_.actual_change:+.3f}")
        c.metric("Predicted by the graph", f"{row_.predicted_change:+.3f}")
        if generate:
            st.markdown(f"**without the change:** {outcome.generated_before!r}  \n"
                        f"**with it:** {outcome.generated_after!r}")  # fmt: skip
