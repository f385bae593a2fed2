"""Stage actors compute on the threads the stage asked for, not on Ray's per-reserved-CPU default."""

from __future__ import annotations

import torch

from samflow.actors.threads import torch_threads, with_torch_threads


def test_threads_follow_the_configured_cpus_rounded_up_within_the_node():
    assert torch_threads(None, 2.0, node_cpus=8) == 2
    assert torch_threads(None, 0.5, node_cpus=8) == 1  # a fractional share still computes
    assert torch_threads(None, 2.5, node_cpus=8) == 3
    assert torch_threads(None, 16.0, node_cpus=4) == 4  # never more threads than the node's CPUs
    assert torch_threads(None, 0.0, node_cpus=4) == 1


def test_an_explicit_thread_count_wins_over_num_cpus():
    assert torch_threads(3, 0.25, node_cpus=8) == 3
    assert torch_threads(12, 1.0, node_cpus=8) == 8


class _Stage:
    def __init__(self, model_uri: str) -> None:
        self.threads_at_load = torch.get_num_threads()  # the model loads on the stage's threads
        self.info = {"model": model_uri}


def test_the_wrapped_stage_loads_on_its_threads_keeps_its_name_and_records_them():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        wanted = torch_threads(2, 0.5)
        stage = with_torch_threads(_Stage, requested=2, num_cpus=0.5)(model_uri="tiny://clip")
        assert type(stage).__name__ == "_Stage"
        assert stage.threads_at_load == wanted == torch.get_num_threads()
        assert stage.info == {"model": "tiny://clip", "torch_threads": wanted}
    finally:
        torch.set_num_threads(before)
