import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


# Tiny models are overhead-bound: one thread is faster, and immune to a busy machine's other processes.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float, what: str = "") -> None:
    """Fail with the max and mean absolute difference, not just a boolean."""
    diff = (actual.float() - expected.float()).abs()
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert diff.max().item() <= atol, f"{what}: max abs diff {diff.max().item():.3g} (mean {diff.mean().item():.3g}) > {atol}"
