"""Feature explorer: browse a dictionary's features, and a Neuronpedia-style page for one feature.

The URL carries the state (`?dict=NAME&feature=N`), so a feature page can be shared.
"""

import numpy as np
import streamlit as st

from workbench import features as F
from workbench import plots
from workbench.errors import WorkbenchError
from workbench.store import explanations, lookups

from common import (
    cached_record,
    choose_dictionary,
    fail,
    feature_url,
    loaded_dictionary,
    open_store,
    stamp,
    store,
    token_strip,
    unembedding,
    view_for,
    visible_token,
)

st.title("Feature explorer")
current = store()
name = choose_dictionary(current)
if name is None:
    st.stop()
path, version = str(current.root), stamp(current)
try:
    record = cached_record(path, version, name)
except WorkbenchError as exc:
    fail(exc)
model = lookups.run(current, record.run).model
if not F.is_encoded(current, name):
    st.info(
        f"'{name}' is trained but not encoded, so there are no feature activations to show yet:\n\n"
        f"```\nworkbench encode --store {current.root} --dict {name}\n```"
    )
    st.stop()


# -- cached queries (per dictionary and feature; a new commit changes `version` and refreshes them) --
# Each depends only on its arguments: it gets its Store back from `path` (common.open_store).


@st.cache_data(show_spinner=False, max_entries=8)
def browse(path: str, version: int, name: str, order: str, low: float, high: float):
    return F.features_table(open_store(path), name, order, low, high).to_pandas()


@st.cache_data(show_spinner=False, max_entries=32)
def by_token(path: str, version: int, name: str, text: str):
    return F.features_on_token(open_store(path), cached_record(path, version, name), text).to_pandas()


@st.cache_data(show_spinner=False, max_entries=8)
def log_densities(path: str, version: int, name: str) -> np.ndarray:
    return F.log_densities(open_store(path), name)


@st.cache_data(show_spinner=False, max_entries=128)
def feature_data(path: str, version: int, name: str, feature: int) -> dict:
    source, rec = open_store(path), cached_record(path, version, name)
    return {
        "summary": F.feature_summary(source, rec, feature),
        "top": F.top_contexts(source, rec, feature, n=12),
        "quantiles": F.quantile_contexts(source, rec, feature),
        "histogram": F.activation_histogram(source, rec, feature),
        "tokens": F.top_tokens(source, rec, feature).to_pandas(),
    }


@st.cache_data(show_spinner=False, max_entries=32)
def about_search(path: str, version: int, name: str, text: str):
    return explanations.search(open_store(path), name, text).to_pandas()


@st.cache_data(show_spinner=False, max_entries=128)
def feature_explanations(path: str, version: int, name: str, feature: int):
    return explanations.of_feature(open_store(path), name, feature)


def link_column(label: str = "Open"):
    return st.column_config.LinkColumn(label, display_text="open →")


# -- browsing ----------------------------------------------------------------------------------------

with st.expander("Find features", expanded="feature" not in st.query_params):
    by_stats, by_text, by_explanation = st.tabs(
        ["By density or activation", "By the tokens they fire on", "By explanation"]
    )
    with by_stats:
        left, middle, right = st.columns([1, 1, 1])
        order = left.selectbox("Order by", list(F.BROWSE_ORDERS), key="browse-order")
        low_exp, high_exp = middle.slider("log10 density between", -7.0, 0.0, (-7.0, 0.0), 0.5, key="browse-density")
        table = browse(path, version, name, order, 10**low_exp, 10**high_exp)
        right.metric("Features in range (first 200 shown)", len(table))
        table.insert(0, "page", [feature_url(name, f) for f in table["feature"]])
        st.dataframe(
            table,
            hide_index=True,
            height=300,
            column_config={"page": link_column(), "density": st.column_config.NumberColumn(format="%.2e")},
        )
    with by_text:
        text = st.text_input(
            "Token text (whitespace-trimmed, any case)", key="browse-token", placeholder="e.g. the, (, def, import"
        )
        if text.strip():
            found = by_token(path, version, name, text)
            if found.empty:
                st.warning(f"No feature of '{name}' fires on a token '{text.strip()}' in run '{record.run}'.")
            else:
                found.insert(0, "page", [feature_url(name, f) for f in found["feature"]])
                st.dataframe(
                    found,
                    hide_index=True,
                    column_config={
                        "page": link_column(),
                        "share": st.column_config.ProgressColumn(
                            "share of its firings", min_value=0.0, max_value=1.0, format="%.2f"
                        ),
                    },
                )

    with by_explanation:
        about = st.text_input("Features about ...", key="browse-about", placeholder="e.g. numbers, python code")
        if about.strip():
            matches = about_search(path, version, name, about)
            if matches.empty:
                st.warning(
                    f"No explanation of a '{name}' feature mentions '{about.strip()}'. Explain more features: "
                    f"`workbench explain --store {current.root} --dict {name} --n-features 100`."
                )
            else:
                matches.insert(0, "page", [feature_url(name, f) for f in matches["feature"]])
                st.dataframe(matches, hide_index=True, column_config={"page": link_column()})


# -- one feature ----------------------------------------------------------------------------------

try:
    wanted = int(st.query_params.get("feature", 0))
except ValueError:
    wanted = 0
feature = int(
    st.number_input(
        f"Feature (0 to {record.n_latents - 1})",
        min_value=0,
        max_value=record.n_latents - 1,
        value=min(max(wanted, 0), record.n_latents - 1),
        step=1,
    )
)
st.query_params["feature"] = str(feature)
if wanted != feature and "feature" in st.query_params and not 0 <= wanted < record.n_latents:
    st.warning(f"Feature {wanted} does not exist in '{name}' (it has {record.n_latents}); showing {feature}.")

try:
    data = feature_data(path, version, name, feature)
except WorkbenchError as exc:
    fail(exc)
summary = data["summary"]

st.header(f"{name} · feature {feature}")
st.caption(
    f"{record.arch} on `{record.hook}`"
    + (f" → `{record.hook_out}`" if record.hook_out else "")
    + f", run `{record.run}` · model `{model}`"
)
explained = feature_explanations(path, version, name, feature)


def score(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


if explained:
    best = explained[0]
    st.markdown(f"**{best.explanation}**")
    st.caption(
        f"explained by {best.explainer} ({best.prompt_version}); balanced accuracy on {best.n_scored} held-out "
        f"contexts: detection {score(best.detection)}, fuzzing {score(best.fuzzing)} (0.5 is chance; a random "
        f"explanation scores {score(best.detection_random)} and {score(best.fuzzing_random)}); ROC AUC "
        f"{score(best.detection_auc)} and {score(best.fuzzing_auc)}"
        + (f"; {len(explained) - 1} more in feature_explanations" if len(explained) > 1 else "")
    )
else:
    st.caption(f"No explanation yet: `workbench explain --store {current.root} --dict {name} --features {feature}`")
cols = st.columns(5)
cols[0].metric("Density", f"{summary.density:.3%}" if summary.density >= 1e-4 else f"{summary.density:.2e}")
cols[1].metric("Fires on", f"{summary.n_active:,} tokens")
cols[2].metric("Max activation", f"{summary.max:.3f}" if summary.max is not None else "-")
cols[3].metric("Mean when firing", f"{summary.mean:.3f}" if summary.mean is not None else "-")
cols[4].metric("Density rank", f"{summary.density_rank} / {summary.n_features}")

if summary.n_active == 0:
    st.info(
        "This feature never fired on the encoded tokens (a dead latent). Its decoder direction is still shown below."
    )

left, right = st.columns([3, 2])
with left:
    st.subheader("Top activations")
    scale = summary.max or 1.0
    for context in data["top"]:
        st.html(
            f'<div class="wb-context"><small>{context.value:.3f} · token {context.token_id}</small>'
            + token_strip(context.tokens, context.values, scale, context.centre)
            + "</div>"
        )
    st.subheader("Samples across the activation range")
    for sample in data["quantiles"]:
        with st.expander(
            f"{sample.low:.3f} – {sample.high:.3f} · {sample.n_in_interval:,} activations",
            expanded=sample is data["quantiles"][0],
        ):
            for context in sample.contexts:
                st.html(
                    f"<small>{context.value:.3f}</small>"
                    + token_strip(context.tokens, context.values, scale, context.centre)
                )

with right:
    histogram = data["histogram"]
    st.subheader("Activation histogram")
    if len(histogram.counts):
        st.plotly_chart(plots.activation_histogram(histogram.edges, histogram.counts), key="histogram")
    st.subheader("Density among all features")
    st.plotly_chart(
        plots.density_histogram(
            log_densities(path, version, name),
            float(np.log10(summary.density)) if summary.n_active else None,
            f"feature {feature}",
        ),
        key="densities",
    )

    st.subheader("Tokens it fires on")
    fired_on = data["tokens"].assign(token=lambda t: t["token"].map(visible_token))
    st.dataframe(
        fired_on,
        hide_index=True,
        column_config={
            "mean_value": st.column_config.NumberColumn("mean", format="%.3f"),
            "max_value": st.column_config.NumberColumn("max", format="%.3f"),
        },
    )

    view = view_for(current, name)
    st.subheader("Nearest features by decoder cosine")
    neighbours = view.nearest(feature, n=8)
    for other, cosine in neighbours:
        st.page_link(
            "views/features.py",
            label=f"feature {other} · cos {cosine:.3f}",
            query_params={"dict": name, "feature": str(other)},
        )

st.subheader("Logit effects of the decoder direction")
st.caption(
    "W_U · (g ⊙ W_dec[f]): the tokens this direction most boosts and suppresses when written to the "
    "residual stream (g is the final norm's gain)."
)
try:
    boosts, suppressions = view.logit_effects(unembedding(path, model), feature, n=10)
except WorkbenchError as exc:
    fail(exc)  # the last section: everything above is already shown
st.plotly_chart(
    plots.logit_effects([(visible_token(t), v) for t, v in boosts], [(visible_token(t), v) for t, v in suppressions]),
    key="logits",
)

st.subheader("Steer with this feature")
st.caption(
    "Greedy continuations of a prompt without and with the feature steered, as Neuronpedia steers: add moves the "
    "activation along the decoder row; clamp holds the feature at the strength, keeping the dictionary's error term."
)
with st.form("steer"):
    prompt = st.text_input("Prompt", value="I think that", key="steer-prompt")
    left, middle, right = st.columns(3)
    mode = left.selectbox("Mode", ["add", "clamp"], key="steer-mode")
    strength = middle.number_input("Strength", value=float(round(4 * (summary.max or 10.0), 1)), key="steer-strength")
    new_tokens = right.number_input("New tokens", min_value=1, max_value=64, value=16, key="steer-tokens")
    steer_now = st.form_submit_button("Generate")
if steer_now:
    from workbench.evals.steering import generate, steering

    loaded = loaded_dictionary(path, name)
    try:
        ids = loaded.prompt_ids(prompt)
        baseline = generate(loaded, ids, int(new_tokens), 0.0, 0)
        with steering(loaded.hf_model, loaded.record, loaded.sae, feature, float(strength), mode):
            steered = generate(loaded, ids, int(new_tokens), 0.0, 0)
    except WorkbenchError as exc:
        fail(exc)
    st.markdown(f"**Unsteered:** {prompt}*{baseline}*")
    st.markdown(f"**Steered ({mode} {strength:g}):** {prompt}*{steered}*")
