"""LFQ under torch.distributed: the batch entropy covers every rank's batch.

Launches ``lfq_ddp_worker.py`` in two processes with ``torchrun`` (gloo, CPU).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).with_name("lfq_ddp_worker.py")


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is missing")
def test_batch_entropy_and_gradient_equal_one_process_on_all_batches() -> None:
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
    lines = [line for line in result.stdout.splitlines() if ": batch entropy" in line]
    assert len(lines) == 2, report
    for line in lines:
        assert line.endswith("batch entropy match; gradient match"), report
