"""CerviCurve engine: reading, measuring, storing, training, predicting. Never imports streamlit."""
