"""Shared pytest fixtures: the bundled data set and shipped checkpoints, loaded once per session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

# Two cores are shared by the test runner and the notebook kernels; one thread avoids oversubscription.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def splits():
    from mpqlab.data import fashion_mnist_splits

    return fashion_mnist_splits()


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return SHARED
