"""VQ under torch.distributed: every rank ends with the bit-identical codebook.

Launches ``vq_ddp_worker.py`` in two processes with ``torchrun`` (gloo, CPU).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).with_name("vq_ddp_worker.py")


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is missing")
def test_codebooks_are_bit_identical_across_ranks() -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--standalone",
        str(WORKER),
    ]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    report = result.stdout + result.stderr
    assert result.returncode == 0, report
    lines = [line for line in result.stdout.splitlines() if ": " in line]
    assert len(lines) == 3, report
    for line in lines:
        assert ": identical;" in line and "without sync: different" in line, report
