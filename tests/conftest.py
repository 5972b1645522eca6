import os

# Tests never reach a model hub and never spin idle OpenMP threads.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
