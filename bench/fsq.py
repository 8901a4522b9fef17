"""Benchmark: tok's FSQ against vector-quantize-pytorch's FSQ, same run, same settings.

    pip install -e '.[bench]'
    python bench/fsq.py                 # CPU, torch's default thread count
    python bench/fsq.py --threads 1     # one thread
    python bench/fsq.py --device cuda

Cases (levels [8, 5, 5, 5], the paper's 2^10 set, for both libraries):

- ``z (64, 256, 4)``: no projection;
- ``z (64, 256, 64)``: a linear projection 64 → 4 → 64 (with bias, both sides).

For each, a training step (zero_grad, forward, MSE against a fixed target,
backward into ``z`` and the projection, SGD step when there are parameters)
and inference (eval mode, ``torch.no_grad``). Timings are medians of
interleaved samples (ours, theirs, ours, …) after warm-up, so a background
load hits both sides alike. Prints a markdown table; ratio = theirs / ours
(above 1: ours is faster).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from _common import bench_parser, cpu_model, infer_step, measure, setup, vqp_version
from torch import nn

from tok.plugins.fsq import FSQ

LEVELS = [8, 5, 5, 5]
CASES = [  # (label, input shape)
    ("(64, 256, 4), no projection", (64, 256, 4)),
    ("(64, 256, 64), projection 64→4", (64, 256, 64)),
]


def ours_fn(dim: int, device: torch.device) -> tuple[nn.Module, Callable]:
    q = FSQ(levels=LEVELS, dim=dim).to(device)
    return q, lambda z: q(z).quantized


def theirs_fn(dim: int, device: torch.device) -> tuple[nn.Module, Callable]:
    from vector_quantize_pytorch import FSQ as TheirFSQ

    q = TheirFSQ(levels=LEVELS, dim=dim).to(device)
    return q, lambda z: q(z)[0]


def train_step(module: nn.Module, fn: Callable, z: torch.Tensor, target: torch.Tensor):
    params = list(module.parameters())
    opt = torch.optim.SGD(params, lr=1e-3) if params else None

    def step() -> None:
        if opt is not None:
            opt.zero_grad(set_to_none=True)
        z.grad = None
        loss = nn.functional.mse_loss(fn(z), target)
        loss.backward()
        if opt is not None:
            opt.step()

    return step


def main() -> None:
    parser = bench_parser(__doc__.splitlines()[0], samples=15, inner=5, warmup=5)
    args = parser.parse_args()
    device = setup(args)

    rows = []
    for label, shape in CASES:
        dim = shape[-1]
        z = torch.randn(shape, device=device, requires_grad=True)
        target = torch.randn(shape, device=device)
        ours, ours_q = ours_fn(dim, device)
        theirs, theirs_q = theirs_fn(dim, device)
        if dim != len(LEVELS):  # same projection weights on both sides
            theirs.load_state_dict(ours.state_dict(), strict=False)
        for mode in ("train", "inference"):
            if mode == "train":
                ours.train(), theirs.train()
                steps = {
                    "ours": train_step(ours, ours_q, z, target),
                    "theirs": train_step(theirs, theirs_q, z, target),
                }
            else:
                ours.eval(), theirs.eval()
                steps = {
                    "ours": infer_step(ours_q, z),
                    "theirs": infer_step(theirs_q, z),
                }
            ms = measure(steps, device, warmup=args.warmup, samples=args.samples, inner=args.inner)
            rows.append((f"{mode}: {label}", ms["ours"], ms["theirs"], ms["theirs"] / ms["ours"]))

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    print(
        f"device: {device} ({where}); torch {torch.__version__}; threads {torch.get_num_threads()}; "
        f"vector-quantize-pytorch {vqp_version()}; levels {LEVELS}; "
        f"median of {args.samples} samples x {args.inner} calls after {args.warmup} warm-up"
    )
    print()
    print("| case | ours ms | theirs ms | ratio (theirs/ours) |")
    print("|---|---:|---:|---:|")
    for case, o, t, r in rows:
        print(f"| {case} | {o:.3f} | {t:.3f} | {r:.2f} |")


if __name__ == "__main__":
    main()
