"""CerviCurve app entry: page config, the research-use notice, navigation over the pages."""
import streamlit as st

st.set_page_config(page_title="CerviCurve", page_icon="🦴", layout="wide")

NOTICE = ("**Research and teaching use only — not a diagnosis.** CerviCurve's outputs are not validated for "
          "clinical decisions; a qualified clinician must read every radiograph.")

st.warning(NOTICE, icon="⚠️")
st.title("CerviCurve")
st.write("Cervical spine curvature (normal / straightened / reversed) on lateral radiographs.")
