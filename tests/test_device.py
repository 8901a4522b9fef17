"""tok.device: devices, precision, and the CPU's denormal mode during training."""

from __future__ import annotations

import torch

from tok.device import flush_denormals


def test_flush_denormals_zeroes_denormal_results_inside_and_not_after():
    denormal = torch.tensor([1e-40], dtype=torch.float32)
    assert denormal.item() != 0  # representable as a denormal
    with flush_denormals(torch.device("cpu")):
        assert (denormal * 1.0).item() == 0.0  # flushed to zero on the CPU
    assert (denormal * 1.0).item() != 0.0  # torch's default again


def test_flush_denormals_leaves_other_devices_alone():
    denormal = torch.tensor([1e-40], dtype=torch.float32)
    with flush_denormals(torch.device("meta")):
        assert (denormal * 1.0).item() != 0.0
