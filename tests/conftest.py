"""Shared fixtures."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Run the suite with one intra-op thread, then restore the previous count.

    The networks here are tiny, so a second thread buys nothing; on a busy two-core
    machine OpenMP's spinning workers made steps and batched 3x3 linear algebra many
    times slower. Results do not depend on the count.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
