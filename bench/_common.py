"""Helpers the benchmark scripts share: the CPU's name and interleaved timing."""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable

import torch


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure(
    steps: dict[str, Callable], device: torch.device, *, warmup: int, samples: int, inner: int = 1
) -> dict[str, float]:
    """Median milliseconds per call of each step, sampled in interleaved order."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for step in steps.values():
        for _ in range(warmup):
            step()
    sync()
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(samples):
        for key, step in steps.items():
            sync()
            start = time.perf_counter()
            for _ in range(inner):
                step()
            sync()
            times[key].append((time.perf_counter() - start) / inner * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}
