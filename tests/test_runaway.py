"""The runaway guard: response length against the starting policy's, KL to the reference, warnings and stops."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from dvpo.trainers.runaway import RunawayGuard, slope

from dvpo.errors import PolicyRunaway


def _record(step, length, kl):
    return {"step": step, "response_length": length, "kl": kl}


def test_length_ratio_is_against_the_first_step_and_warns_once(caplog):
    guard = RunawayGuard(max_kl=100, max_length_ratio=3.0)
    first = _record(1, 10.0, 0.0)
    guard.check(first, "ckpt")
    assert first["length_ratio"] == 1.0
    with caplog.at_level(logging.WARNING):
        for step, length in [(2, 16.0), (3, 17.0)]:
            record = _record(step, length, 1.0)
            guard.check(record, "ckpt")
    assert record["length_ratio"] == pytest.approx(1.7)
    assert caplog.text.count("the run stops past 3.0x") == 1


def test_length_past_the_limit_stops_with_the_option_named():
    guard = RunawayGuard(max_kl=100, max_length_ratio=3.0, reference_length=10.0)
    with pytest.raises(PolicyRunaway, match=r"step 7: mean response length 31.0 tokens is 3.10x .*--max-length-ratio"):
        guard.check(_record(7, 31.0, 5.0), "ckpt")


def test_the_starting_length_averages_the_steps_before_the_policy_moves():
    """The first steps of an unmoved policy are all samples of the starting policy: a rambling SFT model's 16
    samples averaged 8.1, 15.9 and 30.9 tokens on steps 1-3 at KL 0, 0.002 and 0.03 (SmolLM2, `demo --quick`),
    which stopped the run at 3.8x the first step's alone. Against their mean it is 1.69x."""
    guard = RunawayGuard(max_kl=100, max_length_ratio=3.0)
    for step, length, kl in [(1, 8.1, 0.0), (2, 15.9, 0.002), (3, 30.9, 0.03)]:
        record = _record(step, length, kl)
        guard.check(record, "ckpt")
    assert guard.reference_length == pytest.approx((8.1 + 15.9 + 30.9) / 3)
    assert record["length_ratio"] == pytest.approx(30.9 / 18.3)


def test_the_starting_length_is_fixed_once_a_step_leaves_the_reference():
    guard = RunawayGuard(max_kl=100, max_length_ratio=3.0)
    guard.check(_record(1, 10.0, 0.0), "ckpt")
    guard.check(_record(2, 12.0, 0.05), "ckpt")  # still the starting policy: the mean is 11
    moved = _record(3, 20.0, 0.1)  # 0.1 nats per response: the policy has moved, 11 stays
    guard.check(moved, "ckpt")
    assert moved["length_ratio"] == pytest.approx(20.0 / 11.0)
    back = _record(4, 10.0, 0.01)  # a later step near the reference does not reopen the average
    guard.check(back, "ckpt")
    assert guard.reference_length == pytest.approx(11.0) and back["length_ratio"] == pytest.approx(10.0 / 11.0)
    with pytest.raises(PolicyRunaway, match=r"34.0 tokens is 3.09x the starting policy's 11.0"):
        guard.check(_record(5, 34.0, 2.0), "ckpt")


def test_kl_past_the_limit_stops_and_past_half_warns(caplog):
    guard = RunawayGuard(max_kl=20, max_length_ratio=0, reference_length=10.0)
    with caplog.at_level(logging.WARNING):
        guard.check(_record(1, 30.0, 12.0), "ckpt")  # length limit disabled
    assert "KL to the reference is 12.0" in caplog.text
    with pytest.raises(PolicyRunaway, match="--max-kl 20"):
        guard.check(_record(2, 10.0, 21.0), "ckpt")


def test_a_resumed_guard_keeps_the_first_steps_length_and_its_warnings():
    """The checkpoint carries the guard's state: the run never reads its own metrics file back."""
    guard = RunawayGuard(100, 3.0)
    guard.check(_record(1, 8.0, 0.0), "ckpt")
    guard.check(_record(2, 13.0, 0.1), "ckpt")  # warns: 1.6x
    resumed = RunawayGuard(100, 3.0)
    resumed.load_state_dict(json.loads(json.dumps(guard.state_dict())))
    record = _record(3, 12.0, 0.2)
    resumed.check(record, "ckpt")
    assert record["length_ratio"] == pytest.approx(1.5) and resumed.warned == {"length"}
    fresh = RunawayGuard(100, 3.0)
    fresh.load_state_dict({})  # a checkpoint from before the guard's state was kept
    assert fresh.reference_length is None
    # Resumed while the policy was still at its start, the average goes on from the steps it had.
    early = RunawayGuard(100, 3.0)
    early.check(_record(1, 8.0, 0.0), "ckpt")
    later = RunawayGuard(100, 3.0)
    later.load_state_dict(json.loads(json.dumps(early.state_dict())))
    later.check(_record(2, 12.0, 0.0), "ckpt")
    assert later.reference_length == pytest.approx(10.0)
    old = RunawayGuard(100, 3.0)
    old.load_state_dict({"reference_length": 8.0, "warned": []})  # kept the first step's length alone
    old.check(_record(2, 12.0, 0.0), "ckpt")
    assert old.reference_length == 8.0


def _scores(step, proxy, second):
    return {**_record(step, 10.0, 0.0), "proxy_score": proxy, "second_score": second}


def test_slope_is_the_least_squares_line():
    values = [0.3, -1.2, 2.5, 0.7, 1.9, 4.0]
    assert slope(values) == pytest.approx(float(np.polyfit(np.arange(len(values)), values, 1)[0]))
    assert slope([5.0]) == 0.0


def test_a_proxy_that_rises_while_the_second_scorer_falls_warns_once(caplog):
    guard = RunawayGuard(100, 3.0)
    with caplog.at_level(logging.WARNING):
        for step in range(1, 16):
            guard.check(_scores(step, 0.05 * step, 1.0 - 0.03 * step), "ckpt")
    assert caplog.text.count("likely over-optimising its scorer") == 1
    assert "step 10: over the last 10 steps the run's own scorer rose by 0.45" in caplog.text
    assert "fell by 0.27" in caplog.text


@pytest.mark.parametrize("second", [lambda step: 0.02 * step,           # both rise: the policy improves
                                    lambda step: 0.5 - 0.005 * step,    # a fall within noise (0.045 < 0.1)
                                    None])                               # no second scorer
def test_no_warning_unless_the_two_scorers_part_ways(second, caplog):
    guard = RunawayGuard(100, 3.0)
    with caplog.at_level(logging.WARNING):
        for step in range(1, 30):
            record = _scores(step, 0.05 * step, second(step)) if second else {**_record(step, 10.0, 0.0),
                                                                              "proxy_score": 0.05 * step}
            guard.check(record, "ckpt")
    assert "over-optimising" not in caplog.text


def test_a_resumed_watch_keeps_its_window(caplog):
    guard = RunawayGuard(100, 3.0)
    for step in range(1, 6):
        guard.check(_scores(step, 0.05 * step, 1.0 - 0.03 * step), "ckpt")
    resumed = RunawayGuard(100, 3.0)
    resumed.load_state_dict(json.loads(json.dumps(guard.state_dict())))
    with caplog.at_level(logging.WARNING):
        for step in range(6, 11):
            resumed.check(_scores(step, 0.05 * step, 1.0 - 0.03 * step), "ckpt")
    assert "step 10: over the last 10 steps" in caplog.text
