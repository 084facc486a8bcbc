"""CerviCurve app entry: `streamlit run app.py`. Page config and navigation over the pages that exist.

Each page draws the shared frame itself (``ui.frame.frame()``: the research-use notice, the workspace
sidebar, the demo offer), see ui/frame.py for why. Nothing here imports torch: the first page renders
before any model loads.
"""
from pathlib import Path

import streamlit as st

st.set_page_config(page_title="CerviCurve", page_icon="🦴", layout="wide")

# Pages in menu order; a page file that does not exist yet is simply not listed.
PAGES = (
    ("predict", "Predict", ":material/radiology:"),
    ("data", "Data", ":material/folder_open:"),
    ("label", "Label", ":material/edit:"),
    ("train", "Train", ":material/model_training:"),
    ("compare", "Compare", ":material/leaderboard:"),
)
ROOT = Path(__file__).resolve().parent

available = [page for page in PAGES if (ROOT / "pages" / f"{page[0]}.py").exists()]
st.navigation([st.Page(f"pages/{stem}.py", title=title, icon=icon, default=index == 0)
               for index, (stem, title, icon) in enumerate(available)]).run()
