import streamlit as st
from ui.frame import frame
frame()
st.title("Data")
