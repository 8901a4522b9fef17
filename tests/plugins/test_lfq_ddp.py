"""LFQ under torch.distributed: the batch entropy covers every rank's batch.

Launches ``lfq_ddp_worker.py`` in two processes with ``torchrun`` (gloo, CPU).
"""

from __future__ import annotations

from pathlib import Path

WORKER = Path(__file__).with_name("lfq_ddp_worker.py")


def test_batch_entropy_and_gradient_equal_one_process_on_all_batches(torchrun) -> None:
    result = torchrun(WORKER)
    report = result.stdout + result.stderr
    assert result.returncode == 0, report
    lines = [line for line in result.stdout.splitlines() if ": batch entropy" in line]
    assert len(lines) == 2, report
    for line in lines:
        assert line.endswith("batch entropy match; gradient match"), report
