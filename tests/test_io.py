"""tok._io: what a checkpoint's optimizer state becomes when it is read back."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tok._io import load_optimizer, optimizer_tensors
from tok.errors import CheckpointError


def _step(opt: torch.optim.Optimizer, param: torch.nn.Parameter, seed: int) -> None:
    grad = torch.randn(param.shape, generator=torch.Generator().manual_seed(seed))
    param.grad = grad.contiguous(memory_format=torch.channels_last)
    opt.step()


@pytest.mark.parametrize("fused", [True, False])
def test_saved_moments_resume_a_channels_last_parameter_exactly(fused: bool, tmp_path) -> None:
    """The moments are saved contiguous; a fused AdamW reads them as flat memory, so
    restored in another layout than their parameter's they updated the wrong elements
    (0.13 off after one step at lr 0.1)."""
    start = torch.randn(2, 3, 4, 4).contiguous(memory_format=torch.channels_last)
    straight = torch.nn.Parameter(start.clone(memory_format=torch.channels_last))
    opt = torch.optim.AdamW([straight], lr=0.1, fused=fused)
    _step(opt, straight, 1)
    tensors, groups = optimizer_tensors("optimizer", opt)
    save_file(tensors, tmp_path / "state.safetensors")  # a checkpoint's round trip
    tensors = load_file(tmp_path / "state.safetensors")
    resumed = torch.nn.Parameter(straight.detach().clone(memory_format=torch.channels_last))
    again = torch.optim.AdamW([resumed], lr=0.1, fused=fused)
    load_optimizer(again, tensors, "optimizer", groups, run=Path("run"))
    for name, value in again.state[resumed].items():
        assert value.stride() == resumed.stride() or value.dim() == 0, name
    _step(opt, straight, 2)
    _step(again, resumed, 2)
    assert torch.equal(straight, resumed)


def test_state_for_another_model_is_one_error_naming_the_run() -> None:
    a = torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.AdamW([a], lr=0.1)
    a.grad = torch.ones(3)
    opt.step()
    tensors, groups = optimizer_tensors("optimizer", opt)
    other = torch.optim.AdamW(
        [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2))]
    )
    with pytest.raises(CheckpointError, match=r"cannot resume runs/x: .* 1 parameter .* now has 2"):
        load_optimizer(other, tensors, "optimizer", groups, run=Path("runs/x"))
