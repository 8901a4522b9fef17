"""tok._io: what a checkpoint's optimizer state becomes when it is read back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from tok._io import load_optimizer, optimizer_tensors, write_safetensors
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


def test_safetensors_files_are_a_function_of_their_contents(tmp_path: Path) -> None:
    """safetensors writes ``__metadata__`` in a Rust HashMap's random order (safetensors
    issue #584); tok's files sort it, so equal contents give equal bytes — whatever the
    order the metadata was given in — and safetensors reads them back unchanged."""
    metadata = {f"key{i}": f'value {i} ü\n"' for i in range(16)}
    tensors = {"b": torch.arange(6, dtype=torch.int16), "a": torch.ones(2, 3)}
    saved = []
    for n in range(8):
        items = list(metadata.items())
        path = tmp_path / f"{n}.safetensors"
        write_safetensors(path, tensors, metadata=dict(items[n:] + items[:n]))
        saved.append(path.read_bytes())
    assert len(set(saved)) == 1
    with safe_open(tmp_path / "0.safetensors", "pt") as f:
        assert f.metadata() == metadata
    back = load_file(tmp_path / "0.safetensors")
    assert back.keys() == tensors.keys()
    for name, t in tensors.items():
        assert torch.equal(back[name], t)

    # the metadata safetensors wrote in some random order, here sorted
    header = json.loads(saved[0][8 : 8 + int.from_bytes(saved[0][:8], "little")])
    assert list(header["__metadata__"]) == sorted(metadata)
