"""How long does a feature page take to open on a store of 1M tokens?

    python bench/app.py [--tokens 1000000] [--store /tmp/workbench-bench-app]

Builds (once; later runs reuse it) a real store: 1M tokens of CPython's own source code
harvested through the tiny model, a TopK SAE (k 32, 2,048 latents) trained on it and
encoded, so `feature_acts` holds ~32M rows. The page's queries do not depend on d_model,
so the tiny model stands in for SmolLM2, whose 1M-token harvest takes ~40 min here.

Then, side by side in one process, for 20 features spread over the density range:
  page      the feature page run by streamlit.testing's AppTest with that feature's
            query caches empty (the model and dictionary are already loaded, as in a
            running app after its first page);
  data      the same data through workbench.features directly (the floor: no Streamlit);
  reload    the same page again, served from the caches.
The first page of a fresh app also loads the model and dictionary; that is printed apart.
Browser rendering is not included: test_app.py's Chromium test covers that the page draws.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import sysconfig
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harvest import hardware  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
HOOK = "blocks.1.hook_out"


def build_store(root: Path, tokens: int) -> None:
    from workbench.encode import EncodeConfig, run_encode
    from workbench.harvest import HarvestConfig, run_harvest
    from workbench.store import Store
    from workbench.store.features import is_encoded
    from workbench.train import TrainConfig, run_train

    corpus = root.parent / f"{root.name}-corpus.jsonl"
    if not corpus.exists():
        with corpus.open("w") as out:
            for path in sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py")):
                out.write(json.dumps({"text": path.read_text(errors="replace")}) + "\n")
    run_harvest(
        HarvestConfig(model="tiny", hooks=[HOOK], corpus=str(corpus), store=str(root), tokens=tokens, run="big")
    )
    run_train(
        TrainConfig(store=str(root), hook=HOOK, k=32, latents=2048, tokens=400_000, batch_size=4096, name="big-sae")
    )
    if not is_encoded(Store.open_existing(root), "big-sae"):
        run_encode(EncodeConfig(store=str(root), dictionary="big-sae"))


def page_time(at_factory, feature: int) -> float:
    at = at_factory()
    at.query_params.update({"dict": "big-sae", "feature": str(feature)})
    start = time.perf_counter()
    at.switch_page("views/features.py").run()
    elapsed = time.perf_counter() - start
    assert not at.exception and not at.error, (at.exception, at.error)
    assert any("wb-context" in h.proto.body for h in at.get("html")), "the page showed no contexts"
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=1_000_000)
    parser.add_argument("--store", default="/tmp/workbench-bench-app")
    parser.add_argument("--features", type=int, default=20)
    args = parser.parse_args()
    root = Path(args.store)
    start = time.perf_counter()
    build_store(root, args.tokens)
    build_s = time.perf_counter() - start

    import logging

    import streamlit as st
    from streamlit.testing.v1 import AppTest

    logging.getLogger("streamlit").setLevel(logging.ERROR)  # AppTest's bare-mode notices, once per page

    from workbench import features as F
    from workbench.store import Store, lookups

    os.environ["WORKBENCH_STORE"] = str(root)
    store = Store.open_existing(root)
    with store.reader() as con:
        n_rows = con.execute("SELECT count(*) FROM feature_acts WHERE dictionary = 'big-sae'").fetchone()[0]
        n_tokens = con.execute("SELECT count(*) FROM tokens WHERE run = 'big'").fetchone()[0]
        live = [
            r[0]
            for r in con.execute(
                "SELECT feature FROM feature_stats WHERE dictionary = 'big-sae' AND n_active > 0 ORDER BY density DESC"
            ).fetchall()
        ]
    # Features spread from the densest to the rarest, so dense features' long scans are included.
    chosen = [live[int(i)] for i in np.linspace(0, len(live) - 1, args.features)]
    record = lookups.completed_dictionary(store, "big-sae")

    def new_app():
        return AppTest.from_file(str(REPO / "app" / "main.py"), default_timeout=120)

    first = page_time(new_app, chosen[0])  # loads the model and the dictionary into the resource cache
    pages, reloads, data = [], [], []
    for feature in chosen:
        st.cache_data.clear()
        pages.append(page_time(new_app, feature))
        reloads.append(page_time(new_app, feature))
        t0 = time.perf_counter()
        F.feature_summary(store, record, feature)
        F.top_contexts(store, record, feature, n=12)
        F.quantile_contexts(store, record, feature)
        F.activation_histogram(store, record, feature)
        F.top_tokens(store, record, feature)
        data.append(time.perf_counter() - t0)

    print(f"hardware: {hardware()}")
    print(
        f"store: {n_tokens:,} tokens, {n_rows:,} feature activations of a 2,048-latent TopK SAE (k 32) "
        f"(ready in {build_s:.0f}s)"
    )
    print(f"first page of a fresh app (loads model and dictionary): {first:.2f}s")
    print(
        f"feature page, {len(chosen)} features densest to rarest: median {statistics.median(pages):.3f}s, "
        f"max {max(pages):.3f}s  (target < 1 s)"
    )
    print(f"  same data without Streamlit: median {statistics.median(data):.3f}s, max {max(data):.3f}s")
    print(f"  page / data: {statistics.median(pages) / statistics.median(data):.2f}x (Streamlit's share of the time)")
    print(f"  reload from cache: median {statistics.median(reloads):.3f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
