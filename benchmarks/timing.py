"""Wall-clock timing shared by the benchmark scripts."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def interleaved_medians(
    runs: dict[str, Callable[[], object]], device: torch.device, repeats: int
) -> dict[str, float]:
    """Median wall time of each run over ``repeats`` rounds (CUDA synchronised), after one
    untimed round; every round calls each run once in turn, so a change in the machine's
    speed during the measurement reaches every run alike."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for round_index in range(repeats + 1):
        for name, run in runs.items():
            synchronize(device)
            start = time.perf_counter()
            run()
            synchronize(device)
            if round_index > 0:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously); nothing on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
