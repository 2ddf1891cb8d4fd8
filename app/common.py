"""What every page shares: the store, the caches, the colours, and how a token strip is drawn.

The store path comes from WORKBENCH_STORE, which `workbench app --store` sets.

Caching. We cache the `Store` object, not a DuckDB connection: a connection held open would
take DuckDB's file lock and stop a harvest or training run from committing (catalog.py), and
opening one per query costs about a millisecond. Query results are cached per dictionary and
feature with st.cache_data, keyed on the catalog file's modification time, so a commit by a
running harvest or encode shows up on the next page load and nothing stale is served.
Loaded models and dictionaries are cached with st.cache_resource.
"""

from __future__ import annotations

import html
import os
from pathlib import Path

import streamlit as st

from workbench.errors import WorkbenchError
from workbench.features import DictionaryView, Unembedding
from workbench.store import Store, lookups
from workbench.store.records import DictionaryRecord

STORE_ENV = "WORKBENCH_STORE"

# One palette everywhere: warm for positive (fires, boosts), cool for negative (suppresses).
POSITIVE = "#d6604d"
NEGATIVE = "#4393c3"
POSITIVE_RGB = tuple(int(POSITIVE[i:i + 2], 16) for i in (1, 3, 5))  # the same colour, for rgba() shading
SEQUENTIAL = "Reds"

# Page files, for st.page_link and st.switch_page; main.py registers them under these url paths.
PAGES = {
    "overview": "views/overview.py",
    "features": "views/features.py",
    "inspector": "views/inspector.py",
    "layers": "views/layers.py",
    "circuits": "views/circuits.py",
    "codes": "views/codes.py",
    "sql": "views/sql.py",
}


def store_path() -> str:
    path = os.environ.get(STORE_ENV)
    if not path:
        st.error(f"No store given. Start the app with `workbench app --store STORE` (or set {STORE_ENV}).")
        st.stop()
    return str(Path(path).expanduser().resolve())


@st.cache_resource(show_spinner=False)
def _open_store(path: str) -> Store:
    return Store.open_existing(path)


def store() -> Store:
    """The app's store, or a stop with the message that says how to fix it."""
    try:
        return _open_store(store_path())
    except WorkbenchError as exc:
        st.error(str(exc))
        st.stop()


def stamp(store: Store) -> int:
    """Changes whenever a writer commits (the catalog or its write-ahead log is rewritten)."""
    total = 0
    for path in (store.catalog_path, store.catalog_path.with_name(store.catalog_path.name + ".wal")):
        try:
            total += path.stat().st_mtime_ns
        except FileNotFoundError:
            pass
    return total


def fail(exc: Exception) -> None:
    """Show a user-facing error and end this page's run."""
    st.error(str(exc))
    st.stop()


@st.cache_data(show_spinner=False, max_entries=64)
def cached_record(path: str, stamp: int, name: str) -> DictionaryRecord:
    return lookups.completed_dictionary(_open_store(path), name)


@st.cache_resource(show_spinner=False, max_entries=8)
def _dictionary_view(path: str, name: str, weights_mtime: int, _record: DictionaryRecord) -> DictionaryView:
    return DictionaryView(_open_store(path), _record)


def view_for(store: Store, record: DictionaryRecord) -> DictionaryView:
    """The loaded dictionary, reloaded only when its weights file changes."""
    weights = store.root / record.path / "sae_weights.safetensors"
    mtime = weights.stat().st_mtime_ns if weights.exists() else 0
    return _dictionary_view(str(store.root), record.name, mtime, record)


@st.cache_resource(show_spinner="Loading the model ...", max_entries=2)
def model_backend(store_root: str, model: str):
    """The run's model behind the nnsight backend, loaded once per app process."""
    from workbench.models import load_hf_model, make_backend, resolve_model_dir

    hf_model, tokenizer = load_hf_model(resolve_model_dir(model, Path(store_root) / "models"))
    return make_backend("nnsight", hf_model, tokenizer)


@st.cache_resource(show_spinner=False, max_entries=2)
def unembedding(store_root: str, model: str) -> Unembedding:
    backend = model_backend(store_root, model)
    return Unembedding.from_model(backend.hf_model, backend.tokenizer)


def feature_url(dictionary: str, feature: int) -> str:
    """A relative link to a feature page; the same query parameters the page reads."""
    from urllib.parse import urlencode

    return "features?" + urlencode({"dict": dictionary, "feature": feature})


def visible_token(token: str | None) -> str:
    """A token's text with whitespace made visible, so a newline or a run of spaces can be told apart."""
    if token is None:
        return "<bos>"
    shown = token.replace("\n", "↵").replace("\t", "⇥")
    return shown if shown.strip() else shown.replace(" ", "␣")


def token_strip(tokens: list[str], values: list[float], scale: float, centre: int | None = None) -> str:
    """HTML for a run of tokens, each shaded by its activation relative to `scale`.

    Hovering a token shows its value. Tokens where the feature fired carry the class
    `wb-active` (the browser test looks for it), and the centre token is outlined.
    """
    spans = []
    for i, (token, value) in enumerate(zip(tokens, values)):
        alpha = min(max(value / scale, 0.0), 1.0) if scale > 0 else 0.0
        classes = "wb-token" + (" wb-active" if value > 0 else "") + (" wb-centre" if i == centre else "")
        style = f"background: rgba({POSITIVE_RGB[0]},{POSITIVE_RGB[1]},{POSITIVE_RGB[2]},{alpha:.2f});"
        if i == centre:
            style += " outline: 1px solid #333;"
        text = html.escape(token.replace("\n", "↵"))  # spaces stay spaces here: the strip reads as text
        spans.append(f'<span class="{classes}" style="{style}" title="{value:.3f}">{text}</span>')
    return ('<div style="font-family: ui-monospace, monospace; font-size: 0.85rem; white-space: pre-wrap; '
            'line-height: 1.7; margin-bottom: 0.3rem;">' + "".join(spans) + "</div>")


def pick(label: str, names: list[str], param: str) -> str:
    """A selectbox bound to a query parameter: it opens on the named item (else the newest, last) and
    writes the choice back, so the page's address always says what it shows."""
    wanted = st.query_params.get(param)
    # No widget key: the widget's identity then follows `index`, so a link to another item selects it.
    chosen = st.selectbox(label, names, index=names.index(wanted) if wanted in names else len(names) - 1)
    st.query_params[param] = chosen
    return chosen


def choose_dictionary(store: Store, key: str = "dict") -> str | None:
    """A dictionary picker bound to the `dict` query parameter, listing complete dictionaries."""
    with store.reader() as con:
        names = [r[0] for r in con.execute(
            "SELECT name FROM dictionaries WHERE status = 'complete' ORDER BY name").fetchall()]
    if not names:
        st.info("No trained dictionary yet. Train and encode one, then reload:\n\n"
                f"```\nworkbench train --store {store.root} --hook blocks.6.hook_out --arch topk --k 32 --latents 4608 "
                f"--tokens 2M --name my-sae\nworkbench encode --store {store.root} --dict my-sae\n```")
        return None
    wanted = st.query_params.get(key)
    index = names.index(wanted) if wanted in names else 0
    # No widget key: the widget's identity then follows `index`, so a link to another dictionary selects it.
    name = st.selectbox("Dictionary", names, index=index)
    st.query_params[key] = name
    return name
