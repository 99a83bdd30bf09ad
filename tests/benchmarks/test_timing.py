"""Interleaved timing gives every measured run the same machine."""

import torch

from benchmarks.timing import interleaved_medians


def test_interleaved_timing_gives_each_run_its_own_median():
    calls = []
    runs = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    medians = interleaved_medians(runs, torch.device("cpu"), repeats=3)
    assert set(medians) == {"a", "b"}
    assert calls == ["a", "b"] * 4  # one untimed round, then three timed, in turn
