import os

import pytest

# Keep test processes from fighting over the two cores, and never reach for the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("DS_ACCELERATOR", "cpu")


@pytest.fixture(scope="session")
def tiny_model_dir():
    from tests.tiny_model import build_tiny_model

    return build_tiny_model()

