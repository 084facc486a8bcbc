"""CerviCurve engine: reading, measuring, storing, training, predicting. Never imports streamlit."""
import os

# Set before anything loads torch's OpenMP: idle OpenMP threads sleep instead of spinning. On a busy CPU
# (another run, the app, a DDP sibling) spinning threads starve each other: a ResNet-34 step at 96 px took
# 16 s with the default policy and 1.9 s with PASSIVE on a shared 2-core machine. A user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
