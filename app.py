"""CerviCurve app entry: `streamlit run app.py`. Page config and navigation over the pages that exist.

Each page draws the shared frame itself (``ui.frame.frame``: the research-use notice, the workspace
sidebar, the demo offer). Nothing here imports torch: the first page renders before any model loads.
"""
import streamlit as st

from ui.frame import PAGE_ICON, navigation

st.set_page_config(page_title="CerviCurve", page_icon=PAGE_ICON, layout="wide")
navigation().run()
