"""Helpers the benchmark scripts share: the CPU's name and interleaved timing."""

from __future__ import annotations

import argparse
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


def bench_parser(
    description: str, *, samples: int, inner: int | None, warmup: int
) -> argparse.ArgumentParser:
    """The options every benchmark takes: device, threads and how many timed samples.

    ``inner=None`` leaves out ``--inner`` (scripts that time single calls).
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument(
        "--samples", type=int, default=samples, help="timed samples per case and side"
    )
    if inner is not None:
        parser.add_argument("--inner", type=int, default=inner, help="calls per timed sample")
    parser.add_argument(
        "--warmup", type=int, default=warmup, help="untimed calls per case and side"
    )
    return parser


def setup(args: argparse.Namespace) -> torch.device:
    """Apply ``--threads``, seed torch, and return the ``--device``."""
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    return torch.device(args.device)


def infer_step(fn: Callable, z: torch.Tensor) -> Callable[[], None]:
    """A no-grad call of ``fn(z)``, for :func:`measure`."""

    def step() -> None:
        with torch.no_grad():
            fn(z)

    return step


def vqp_version() -> str:
    """The installed vector-quantize-pytorch version."""
    from importlib.metadata import version

    return version("vector-quantize-pytorch")
