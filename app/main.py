"""The workbench app's entry point: `workbench app --store STORE` runs `streamlit run app/main.py`.

Each page is one file in views/, named as its url path (AppTest finds pages by that name). The url
paths are part of the interface: a feature page's
link (`/features?dict=NAME&feature=N`) can be shared and opens the same page.
"""

import streamlit as st

from common import PAGES, store_path

st.set_page_config(page_title="workbench", layout="wide")

pages = [
    # Streamlit serves the default page at the root only: its url path becomes "" whatever url_path says, and
    # /overview (the address the README gives) answered "Page not found". So the overview is registered twice:
    # at the root, where the menu links, and at /overview as a hidden page running the same file.
    st.Page(PAGES["overview"], title="Overview", url_path="", default=True),
    st.Page(PAGES["overview"], title="Overview", url_path="overview", visibility="hidden"),
    st.Page(PAGES["features"], title="Feature explorer", url_path="features"),
    st.Page(PAGES["inspector"], title="Text inspector", url_path="inspector"),
    st.Page(PAGES["layers"], title="Layer contributions", url_path="layers"),
    st.Page(PAGES["circuits"], title="Circuits", url_path="circuits"),
    st.Page(PAGES["codes"], title="Codes", url_path="codes"),
    st.Page(PAGES["sql"], title="SQL console", url_path="sql"),
]
page = st.navigation(pages)
st.sidebar.caption(f"Store: `{store_path()}`")
page.run()
