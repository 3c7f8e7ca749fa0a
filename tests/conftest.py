"""Shared fixtures."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def single_thread():
    """One intra-op thread: tests of tiny tensors gain nothing from threads, and on a busy
    machine OpenMP's spinning workers make batched 3x3 linear algebra many times slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
