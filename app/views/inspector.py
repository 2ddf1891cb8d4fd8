"""Text inspector: type a prompt, see which features fire on each token, click through to a feature."""

import pandas as pd
import streamlit as st

from workbench import features as F
from workbench.errors import WorkbenchError
from workbench.store import lookups

from common import (
    cached_record,
    choose_dictionary,
    fail,
    feature_url,
    model_backend,
    open_store,
    stamp,
    store,
    token_strip,
    view_for,
    visible_token,
)

st.title("Text inspector")
current = store()
name = choose_dictionary(current)
if name is None:
    st.stop()
try:
    record = cached_record(str(current.root), stamp(current), name)
except WorkbenchError as exc:
    fail(exc)
model = lookups.run(current, record.run).model
st.caption(f"Runs `{model}` on [BOS] + your text, reads `{record.hook}`, and encodes it with '{name}'.")

prompt = st.text_area(
    "Prompt",
    value=st.query_params.get("prompt", "When Mary and John went to the store, John gave a drink to"),
    height=100,
)
per_token = st.slider("Features listed per token", 1, 10, 3)
if not prompt.strip():
    st.info("Type some text to inspect.")
    st.stop()
st.query_params["prompt"] = prompt


@st.cache_data(show_spinner="Running the model ...", max_entries=32)
def encode(path: str, version: int, name: str, prompt: str) -> F.PromptEncoding:
    """One forward pass per distinct prompt: moving the slider or picking a feature reuses it.
    Depends only on its arguments: the Store comes back from `path` (common.open_store)."""
    rec = cached_record(path, version, name)
    opened = open_store(path)
    return F.encode_prompt(view_for(opened, name), model_backend(path, lookups.run(opened, rec.run).model), prompt)


try:
    encoding = encode(str(current.root), stamp(current), name, prompt)
except WorkbenchError as exc:
    fail(exc)

acts = encoding.acts
values, indices = acts.topk(per_token, dim=1)
rows = []
for position, token in enumerate(encoding.tokens):
    for value, feature in zip(values[position].tolist(), indices[position].tolist()):
        if value > 0:
            rows.append(
                {
                    "position": position,
                    "token": visible_token(token),
                    "feature": feature,
                    "activation": value,
                    "page": feature_url(name, feature),
                }
            )
table = pd.DataFrame(rows, columns=["position", "token", "feature", "activation", "page"])

# Features active anywhere in the prompt, strongest first: pick one to shade the text by.
strongest = acts.max(dim=0).values
active = [int(f) for f in strongest.argsort(descending=True).tolist() if strongest[f] > 0]
st.subheader("Shade the text by a feature")
if not active:
    st.warning("No feature fires on this text.")
else:
    chosen = st.selectbox("Feature", active, format_func=lambda f: f"{f} (max {strongest[f]:.3f})")
    column = acts[:, chosen].tolist()
    st.html(token_strip(encoding.tokens, column, max(column)))
    st.page_link(
        "views/features.py", label=f"Open feature {chosen} →", query_params={"dict": name, "feature": str(chosen)}
    )

st.subheader("Top features on each token")
st.dataframe(
    table,
    hide_index=True,
    column_config={
        "page": st.column_config.LinkColumn("Feature page", display_text="open →"),
        "activation": st.column_config.NumberColumn(format="%.3f"),
    },
)
st.caption(
    f"{len(encoding.tokens)} tokens (BOS included, never encoded); "
    f"{int((acts > 0).sum(dim=1).float().mean())} features fire per token on average."
)
