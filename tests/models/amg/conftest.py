from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def single_torch_thread() -> Iterator[None]:
    """Engine tests use tiny tensors: one intra-op thread avoids OpenMP spin-waiting on a busy
    2-core machine (which made each small op cost a time slice)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
