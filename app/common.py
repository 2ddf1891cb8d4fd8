"""What every page shares: the store, the caches, how errors are shown, and how a token strip is drawn.

The app only renders. Pages read through library functions (workbench.store.results, workbench.features,
workbench.codebooks.browse: the same ones analyses and the CLI use), draw with workbench.plots, and hold
no SQL and no store paths of their own.

The store path comes from WORKBENCH_STORE, which `workbench app --store` sets.

Caching. We cache the `Store` object (open_store), not a DuckDB connection: a connection held open would
take DuckDB's file lock and stop a harvest or training run from committing (catalog.py), and
opening one per query costs about a millisecond. Query results are cached with st.cache_data, keyed on
the store root, the catalog stamp (results.catalog_stamp) and the names asked for, so a commit by a
running harvest or encode shows up on the next page load and nothing stale is served. A cached function
depends only on its arguments: it gets its Store back from the root with open_store, never from a
page's variable, or two stores (or two tests) could be served each other's cached results.
Loaded models and dictionaries are cached with st.cache_resource, keyed on their weights' stamps.

Errors. `fail` is the one way a page shows an error: the message (which says what to do) in an
st.error box, and the page's run ends there.
"""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import NoReturn

import streamlit as st

from workbench.errors import WorkbenchError
from workbench.features import DictionaryView, Unembedding
from workbench.plots import POSITIVE
from workbench.store import Store, lookups, results
from workbench.store.records import DictionaryRecord

STORE_ENV = "WORKBENCH_STORE"

# The plots' warm colour, for rgba() shading of token strips: one palette everywhere (workbench/plots.py).
POSITIVE_RGB = tuple(int(POSITIVE[i : i + 2], 16) for i in (1, 3, 5))

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


def fail(problem: Exception | str) -> NoReturn:
    """Show a user-facing error and end this page's run: the one way a page shows an error.

    `problem` is an exception whose message says what went wrong and what to do (every WorkbenchError's
    does), or such a message itself."""
    st.error(str(problem))
    st.stop()  # raises inside a page's run
    # Outside a page's run (a bare `python` import) st.stop returns: raise, rather than carry on past an error.
    raise problem if isinstance(problem, Exception) else WorkbenchError(problem)


def store_path() -> str:
    path = os.environ.get(STORE_ENV)
    if not path:
        fail(f"No store given. Start the app with `workbench app --store STORE` (or set {STORE_ENV}).")
    return str(Path(path).expanduser().resolve())


@st.cache_resource(show_spinner=False)
def open_store(path: str) -> Store:
    """The Store at `path` (a resolved store root), opened and checked once per app process."""
    return Store.open_existing(path)


def store() -> Store:
    """The app's store, or a stop with the message that says how to fix it."""
    try:
        return open_store(store_path())
    except WorkbenchError as exc:
        fail(exc)


def stamp(store: Store) -> int:
    """Changes whenever a writer commits: the cache key that keeps cached reads fresh."""
    return results.catalog_stamp(store)


@st.cache_data(show_spinner=False, max_entries=64)
def cached_record(path: str, stamp: int, name: str) -> DictionaryRecord:
    return lookups.completed_dictionary(open_store(path), name)


@st.cache_resource(show_spinner=False, max_entries=8)
def _dictionary_view(path: str, name: str, weights_stamp: int) -> DictionaryView:
    # Keyed on the weights' stamp, not the catalog's: a harvest's commits leave a loaded dictionary valid.
    store = open_store(path)
    return DictionaryView(store, lookups.completed_dictionary(store, name))


def view_for(store: Store, name: str) -> DictionaryView:
    """Dictionary `name`, loaded, and reloaded only when its weights file changes."""
    return _dictionary_view(str(store.root), name, results.dictionary_weights_stamp(store, name))


def app_placement():
    from workbench.devices import resolve_placement

    return resolve_placement(os.environ.get("WORKBENCH_DEVICE", "cpu"), os.environ.get("WORKBENCH_DTYPE", "float32"))


@st.cache_resource(show_spinner="Loading the model ...", max_entries=2)
def model_backend(path: str, model: str):
    """The run's model behind the nnsight backend, loaded once per app process, where `workbench app --device
    --dtype` said (default: cpu, float32)."""
    from workbench.models import load_hf_model, make_backend

    hf_model, tokenizer = load_hf_model(results.model_dir(open_store(path), model), app_placement())
    return make_backend("nnsight", hf_model, tokenizer)


@st.cache_resource(show_spinner="Loading the model and dictionary ...", max_entries=2)
def loaded_dictionary(path: str, name: str):
    """A dictionary beside its model, for steering; where `workbench app --device --dtype` said."""
    from workbench.evals.common import LoadedDictionary

    placement = app_placement()
    return LoadedDictionary.load(open_store(path), name, placement.device_name, placement.dtype_name)


@st.cache_resource(show_spinner=False, max_entries=2)
def unembedding(path: str, model: str) -> Unembedding:
    backend = model_backend(path, model)
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
    return (
        '<div style="font-family: ui-monospace, monospace; font-size: 0.85rem; white-space: pre-wrap; '
        'line-height: 1.7; margin-bottom: 0.3rem;">' + "".join(spans) + "</div>"
    )


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
    names = complete_dictionary_names(str(store.root), stamp(store))
    if not names:
        st.info(
            "No trained dictionary yet. Train and encode one, then reload:\n\n"
            f"```\nworkbench train --store {store.root} --hook blocks.6.hook_out --arch topk --k 32 --latents 4608 "
            f"--tokens 2M --name my-sae\nworkbench encode --store {store.root} --dict my-sae\n```"
        )
        return None
    wanted = st.query_params.get(key)
    index = names.index(wanted) if wanted in names else 0
    # No widget key: the widget's identity then follows `index`, so a link to another dictionary selects it.
    name = st.selectbox("Dictionary", names, index=index)
    st.query_params[key] = name
    return name


@st.cache_data(show_spinner=False, max_entries=16)
def complete_dictionary_names(path: str, stamp: int) -> list[str]:
    return results.complete_dictionary_names(open_store(path))
