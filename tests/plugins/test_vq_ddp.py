"""VQ under torch.distributed: every rank ends with the bit-identical codebook.

Launches ``vq_ddp_worker.py`` in two processes with ``torchrun`` (gloo, CPU).
"""

from __future__ import annotations

from pathlib import Path

WORKER = Path(__file__).with_name("vq_ddp_worker.py")


def test_codebooks_are_bit_identical_across_ranks(torchrun) -> None:
    result = torchrun(WORKER)
    report = result.stdout + result.stderr
    assert result.returncode == 0, report
    lines = [line for line in result.stdout.splitlines() if ": " in line]
    assert len(lines) == 3, report
    for line in lines:
        assert ": identical;" in line and "without sync: different" in line, report
