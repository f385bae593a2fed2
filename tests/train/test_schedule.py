"""The learning-rate schedule: warm-up, cosine decay over steps or the time budget."""

import math

import pytest

from samflow.train.schedule import LrSchedule, planned_steps


def test_cosine_warms_up_then_decays_to_zero_over_the_planned_steps():
    schedule = LrSchedule(1e-3, "cosine", warmup_steps=4, total_steps=100)
    rates = [schedule.rate(step, schedule.progress(step, 0.0, None)) for step in range(100)]
    assert rates[0] == pytest.approx(1e-3 / 4 * 0.5 * (1 + math.cos(0)))
    assert rates[3] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 0.03)))
    assert rates[50] == pytest.approx(0.5e-3)
    assert all(a >= b for a, b in zip(rates[3:], rates[4:]))  # never rises after warm-up
    assert schedule.rate(100, schedule.progress(100, 0.0, None)) == pytest.approx(0.0)


def test_a_time_budget_anneals_before_the_planned_steps_end():
    schedule = LrSchedule(1e-3, "cosine", total_steps=10_000)
    share = schedule.progress(steps_done=10, seconds_spent=45.0, max_seconds=60.0)
    assert share == pytest.approx(0.75)
    assert schedule.rate(10, share) == pytest.approx(1e-3 * 0.5 * (1 + math.cos(0.75 * math.pi)))
    assert schedule.progress(10, 90.0, 60.0) == 1.0


def test_constant_keeps_the_rate_after_warm_up():
    schedule = LrSchedule(2e-4, "constant", warmup_steps=2, total_steps=10)
    assert [schedule.rate(s, schedule.progress(s, 0, None)) for s in (0, 1, 9)] == pytest.approx([1e-4, 2e-4, 2e-4])


def test_planned_steps_share_the_split_over_workers():
    assert planned_steps(train_items=10, batch_size=4, workers=1, epochs=3) == 9
    assert planned_steps(train_items=10, batch_size=4, workers=2, epochs=1) == 2
