"""The CUDA paths: training in bf16 on a GPU, pinned-memory streaming, DDP over nccl, and
``tok encode`` with one GPU per torchrun process. Every test here needs a CUDA GPU (two
for the multi-process ones) and is skipped without one, as in CI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import RECIPE, TINY, mnist_dir, train_tiny
from safetensors.torch import load_file

from tok.data import ImageFolder
from tok.data.batches import Augment, Streamed
from tok.models import Tokenizer
from tok.tokens import load_tokens

GPUS = torch.cuda.device_count() if torch.cuda.is_available() else 0
pytestmark = pytest.mark.skipif(GPUS == 0, reason="needs a CUDA GPU")
two_gpus = pytest.mark.skipif(GPUS < 2, reason="needs two CUDA GPUs")

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
ON_GPU = ["train.device='cuda'", "train.precision='bf16'", "train.log_every=1"]


def run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if r["split"] == "train"}


def test_training_on_a_gpu_in_bf16(tmp_path):
    """The recipe trains on ``cuda`` under bf16 autocast: finite, falling losses, weights
    saved in float32, and the tokenizer encodes on the GPU and the CPU alike in shape."""
    out = train_tiny(tmp_path / "run", *ON_GPU, "train.steps=40")
    by_step = losses(out)
    assert all(torch.isfinite(torch.tensor(v)) for v in by_step.values())
    assert by_step[40] < by_step[1]
    weights = load_file(out / "model.safetensors")
    assert all(w.dtype == torch.float32 for w in weights.values() if w.is_floating_point())
    model = Tokenizer.load(out, map_location="cuda")
    x = torch.rand(8, *model.input_shape, device="cuda")
    with torch.no_grad():
        codes = model.encode(x)
    assert codes.device.type == "cuda" and codes.shape[0] == 8


def test_streamed_batches_are_pinned_for_the_gpu(mnist_pngs):
    """With ``pin_memory`` (what ``training_data`` asks for on CUDA) the DataLoader hands
    over page-locked batches, so the copy to the GPU can overlap the step."""
    folder = ImageFolder(path=str(mnist_pngs), channels=1)
    stream = Streamed(
        folder, folder.keys("train"), split="train", batch_size=16, seed=0, augment=Augment(),
        step=0, workers=2, pin_memory=True,
    )  # fmt: skip
    try:
        batch = next(stream)
    finally:
        stream.close()
    assert batch.is_pinned() and batch.shape == (16, 1, 28, 28)


def test_encode_on_a_named_gpu(trained_run, tmp_path):
    """``tok encode --device cuda:N`` (the last GPU) gives the rows a CPU encode gives, up
    to the rare code whose latent sits on a rounding boundary."""
    mnist_dir()
    last = f"cuda:{GPUS - 1}"
    args = ["mnist:test", "--tokenizer", str(trained_run), "--limit", "2000", "--no-progress"]
    run([sys.executable, "-m", "tok", "encode", *args, "--out", str(tmp_path / "gpu"),
         "--device", last])  # fmt: skip
    run([sys.executable, "-m", "tok", "encode", *args, "--out", str(tmp_path / "cpu")])
    gpu, cpu = load_tokens(tmp_path / "gpu"), load_tokens(tmp_path / "cpu")
    assert gpu.keys == cpu.keys
    assert (gpu.tokens == cpu.tokens).float().mean() > 0.999


@two_gpus
def test_two_gpu_processes_match_one_over_nccl(tmp_path):
    """DDP over nccl, one GPU per process: the same global batches as one process, so the
    losses agree to bf16 rounding at every step (the CPU test, tests/test_distributed.py,
    holds fp32 runs to 1e-5)."""
    mnist_dir()
    sets = [*TINY, *ON_GPU, "model.channels=[8, 16]", "train.batch_size=8"]

    def train_cmd(out: Path) -> list[str]:
        cmd = ["tok", "train", str(RECIPE), "--no-progress"]
        return cmd + [a for s in [*sets, f"output.dir='{out}'"] for a in ("--set", s)]

    run([sys.executable, "-m", *train_cmd(tmp_path / "one")])
    run([*TORCHRUN, "--nproc-per-node=2", "-m", *train_cmd(tmp_path / "two")])
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert sorted(one) == sorted(two)
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=2e-2), step


@two_gpus
def test_two_gpu_encode_is_one_gpu_encode(trained_run, tmp_path):
    """``--nproc 2 --device cuda``: each process on its own GPU (``cuda:LOCAL_RANK``); the
    folder is complete and holds the rows one GPU gives, shard for shard."""
    mnist_dir()
    args = ["mnist:test", "--tokenizer", str(trained_run), "--shard-size", "500"]
    args += ["--device", "cuda", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "tok", "encode", *args, "--out",
                          str(tmp_path / "one")], env=env, capture_output=True, text=True)  # fmt: skip
    assert one.returncode == 0, one.stderr
    run([sys.executable, "-m", "tok", "encode", *args, "--out", str(tmp_path / "two"),
         "--nproc", "2"])  # fmt: skip
    a, b = load_tokens(tmp_path / "one"), load_tokens(tmp_path / "two")
    assert a.keys == b.keys and len(a.keys) == 10000
    assert (a.tokens == b.tokens).float().mean() > 0.999
