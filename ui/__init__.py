"""Streamlit building blocks shared by the pages (the frame every page draws, figures). Only pages import ui."""
