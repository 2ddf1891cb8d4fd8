"""Codes: browse a codebook's codes per site, see where a code fires, and steer generation with it."""

import pandas as pd
import streamlit as st

from workbench.codebooks import browse
from workbench.errors import WorkbenchError
from workbench.store import codes as stored_codes
from workbench.store import results

from common import app_placement, fail, open_store, pick, stamp, store, token_strip

st.title("Codes")
current = store()
path = str(current.root)


# Cached reads depend only on their arguments: each gets its Store back from `path` (common.open_store).


@st.cache_data(show_spinner=False, max_entries=16)
def codebook_names(path: str, stamp: int) -> list[str]:
    return results.complete_codebook_names(open_store(path))


@st.cache_data(show_spinner=False, max_entries=16)
def summary(path: str, stamp: int, name: str) -> browse.CodebookSummary:
    return browse.codebook_summary(open_store(path), name)


@st.cache_data(show_spinner=False, max_entries=32)
def table(path: str, stamp: int, name: str, run: str, site: str) -> pd.DataFrame:
    return stored_codes.code_table(open_store(path), name, run, site).to_pandas()


@st.cache_resource(show_spinner="Loading the model and its codebooks ...", max_entries=1)
def codebook_model(path: str, name: str, weights_stamp: int):
    """Keyed on the codebooks' weights, not the catalog: a harvest's commits leave the loaded model valid."""
    from workbench.codebooks.train import open_codebook_model

    coded, tokenizer, _ = open_codebook_model(open_store(path), name, app_placement().device)
    return coded, tokenizer


names = codebook_names(path, stamp(current))
if not names:
    st.info(
        "No trained codebooks yet. Train some and write their codes for a harvest run, then reload:\n\n"
        f"```\nworkbench codebook train --model smollm2-135m --sites blocks.6.mlp.hook_out,blocks.6.attn.hook_out "
        f"--tokens 32k --store {path}\nworkbench codebook encode --store {path} --codebook NAME --run RUN\n```"
    )
    st.stop()


name = pick("Codebooks", names, "codebook")
try:
    info = summary(path, stamp(current), name)
except WorkbenchError as exc:
    fail(exc)
book = info.codebook

columns = st.columns(4)
columns[0].metric("Codes per site", f"{book.n_codes:,}", help=f"k = {book.k} codes fire per token at each site")
if book.lm_loss_original is not None and book.lm_loss_codebooks is not None:
    columns[1].metric("LM loss, original model", f"{book.lm_loss_original:.4f}")
    columns[2].metric(
        "LM loss, with codebooks",
        f"{book.lm_loss_codebooks:.4f}",
        delta=f"{book.lm_loss_codebooks - book.lm_loss_original:+.4f}",
        delta_color="inverse",
    )
if book.lm_loss_bypassed is not None:
    columns[3].metric(
        "Fine-tuned, codebooks bypassed",
        f"{book.lm_loss_bypassed:.4f}",
        help="Against the row before: what the codebooks themselves cost, apart from fine-tuning.",
    )
st.caption(f"Model `{book.model}`; sites: {', '.join(f'`{s}`' for s in book.sites)}.")

if not info.encoded_runs:
    st.info(
        "No codes are stored for these codebooks yet. Write them for a harvest run of the same model:\n\n"
        f"```\nworkbench codebook encode --store {path} --codebook {name} --run RUN\n```"
    )
    st.stop()

left, right = st.columns(2)
with left:
    run = pick("Run", info.encoded_runs, "run")
with right:
    site = pick("Site", book.sites, "site")

codes = table(path, stamp(current), name, run, site)
st.subheader(f"{len(codes):,} of {info.total_codes[site]:,} codes fire at {site}")
st.dataframe(
    codes,
    hide_index=True,
    height=260,
    column_config={
        "density": st.column_config.NumberColumn(format="%.4f"),
        "mean_similarity": st.column_config.NumberColumn(format="%.3f"),
        "purity": st.column_config.NumberColumn(format="%.2f", help="share of the code's firings on its top token"),
    },
)

default_code = int(codes["code"].iloc[0]) if len(codes) else 0
try:
    wanted = int(st.query_params.get("code", default_code))
except ValueError:
    wanted = default_code
last = info.total_codes[site] - 1
code = int(st.number_input("Code", min_value=0, max_value=last, value=min(max(wanted, 0), last), step=1))
st.query_params["code"] = str(code)
if info.head_of(site, code) is not None:
    st.caption(f"Per-head site: code {code} is head {info.head_of(site, code)}'s code {code % book.n_codes}.")

try:
    contexts = browse.code_contexts(current, info, run, site, code, n=12)
    tokens = stored_codes.code_tokens(current, name, site, code, n=10, run=run).to_pandas()
    targets = browse.default_targets(current, name, site, code)
except WorkbenchError as exc:
    fail(exc)

if not contexts:
    st.warning(f"Code {code} never fires at {site} on run '{run}'.")
else:
    left, right = st.columns([3, 1])
    with left:
        st.markdown(f"**Where code {code} fires** (most similar first, one per context; shading = cosine similarity)")
        for context in contexts:
            st.markdown(token_strip(context.tokens, context.values, 1.0, context.centre), unsafe_allow_html=True)
    with right:
        st.markdown("**Tokens it fires on**")
        st.dataframe(tokens, hide_index=True)

st.subheader("Steer generation with this code")
st.caption(
    "Samples continuations twice with the same seeds: as the model is, and with the code forced on at "
    f"{site} at every position. A continuation counts if it contains one of the targets."
)
prompt = st.text_input("Prompt", value=st.query_params.get("prompt", "Once upon a time"))
targets_text = st.text_input(
    "Targets (comma-separated)",
    value=", ".join(t.strip() for t in targets),
    help="the code's commonest tokens with a letter or digit; edit freely",
)
left, middle, right = st.columns(3)
samples = left.slider("Samples", 1, 16, 4)
new_tokens = middle.slider("New tokens", 4, 48, 16)
mode = right.radio(
    "Forcing",
    ["swap", "only"],
    horizontal=True,
    help="swap: the code replaces the weakest of the k codes; only: it fills all k slots (a stronger push)",
)


if st.button("Generate", type="primary"):
    from workbench.codebooks.steer import steer

    try:
        coded, tokenizer = codebook_model(path, name, results.codebook_weights_stamp(current, name))
        result = steer(
            coded,
            tokenizer,
            prompt,
            {site: code},
            [t for t in targets_text.split(",") if t.strip()],
            n_samples=samples,
            max_new_tokens=new_tokens,
            mode=mode,
        )
    except WorkbenchError as exc:
        fail(exc)
    left, right = st.columns(2)
    left.metric("Baseline: share with a target", f"{result.baseline_rate:.2f}")
    right.metric(
        f"Code {code} forced: share with a target",
        f"{result.steered_rate:.2f}",
        delta=f"{result.steered_rate - result.baseline_rate:+.2f}",
    )
    st.dataframe(pd.DataFrame({"baseline": result.baseline, "steered": result.steered}), hide_index=True)
