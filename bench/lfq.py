"""Benchmark: tok's LFQ against vector-quantize-pytorch's LFQ, same run, same settings.

    pip install -e '.[bench]'
    python bench/lfq.py                 # CPU, torch's default thread count
    python bench/lfq.py --threads 1     # one thread
    python bench/lfq.py --device cuda

Both sides use the same settings: entropy loss weight 0.1, commitment weight
0.25, diversity gamma 1.0, inverse temperature 100, codebook scale 1, one
codebook, a linear projection (with bias, both sides, the same weights) when
``dim`` differs from ``log2(codebook_size)``. Cases, ``z (64, 256, dim)``:

- 2^10 codes, ``dim = 10``: no projection;
- 2^10 codes, ``dim = 64``: projection 64 → 10 → 64;
- 2^12 codes, ``dim = 64``: projection 64 → 12 → 64;
- with ``--device cuda`` also 2^14 codes, ``z (64, 1024, 64)``: projection 64 → 14 → 64.

For each, a training step (zero_grad, forward, MSE against a fixed target plus
the auxiliary loss, backward into ``z`` and the projection, SGD step when there
are parameters) and inference (eval mode, ``torch.no_grad``). Before timing,
the script checks on the case's input that both give the same codes and the
same indices — vector-quantize-pytorch numbers the first channel as the most
significant bit, tok as the least, so their indices are compared bit-reversed
— and training losses within 0.2 % (theirs clamp probabilities at 1e-5 inside
the entropy's log). Timings are medians of interleaved samples (ours, theirs,
ours, …) after warm-up, so a background load hits both sides alike. Prints a
markdown table; ratio = theirs / ours (above 1: ours is faster).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from _common import bench_parser, cpu_model, infer_step, measure, setup, vqp_version
from torch import nn

from tok.plugins.lfq import LFQ

SETTINGS = {"entropy_weight": 0.1, "commitment_weight": 0.25, "diversity_gamma": 1.0}
INV_TEMPERATURE = 100.0
CASES = [  # (label, codebook size, input shape)
    ("2^10, (64, 256, 10), no projection", 2**10, (64, 256, 10)),
    ("2^10, (64, 256, 64), projection 64→10", 2**10, (64, 256, 64)),
    ("2^12, (64, 256, 64), projection 64→12", 2**12, (64, 256, 64)),
]
CUDA_CASES = [  # larger, on a GPU only: theirs hold (positions, 2^bits) tables
    ("2^14, (64, 1024, 64), projection 64→14", 2**14, (64, 1024, 64)),
]


def ours_fn(size: int, dim: int, device: torch.device) -> tuple[nn.Module, Callable]:
    q = LFQ(codebook_size=size, dim=dim, inv_temperature=INV_TEMPERATURE, **SETTINGS).to(device)

    def fn(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = q(z)
        return out.quantized, out.indices[..., 0], out.aux_loss

    return q, fn


def theirs_fn(size: int, dim: int, device: torch.device) -> tuple[nn.Module, Callable]:
    from vector_quantize_pytorch import LFQ as TheirLFQ

    q = TheirLFQ(
        dim=dim,
        codebook_size=size,
        entropy_loss_weight=SETTINGS["entropy_weight"],
        commitment_loss_weight=SETTINGS["commitment_weight"],
        diversity_gamma=SETTINGS["diversity_gamma"],
    ).to(device)
    return q, lambda z: tuple(q(z, inv_temperature=INV_TEMPERATURE))


def reverse_bits(indices: torch.Tensor, bits: int) -> torch.Tensor:
    return sum(((indices.long() >> (bits - 1 - i)) & 1) << i for i in range(bits))


def check_agreement(ours: Callable, theirs: Callable, z: torch.Tensor, bits: int) -> None:
    """Same codes, same (bit-reversed) indices, losses within 0.2 %."""
    with torch.no_grad():
        oq, oi, ol = ours(z)
        tq, ti, tl = theirs(z)
    if not torch.equal(oi, reverse_bits(ti, bits)):
        raise SystemExit("indices differ from vector-quantize-pytorch's (bit-reversed)")
    if not torch.allclose(oq, tq, rtol=0, atol=1e-5):
        raise SystemExit(f"codes differ: max {(oq - tq).abs().max().item():.3g}")
    if not math.isclose(ol.item(), tl.item(), rel_tol=2e-3, abs_tol=1e-4):
        raise SystemExit(f"aux losses differ: ours {ol.item()!r}, theirs {tl.item()!r}")


def train_step(module: nn.Module, fn: Callable, z: torch.Tensor, target: torch.Tensor):
    params = list(module.parameters())
    opt = torch.optim.SGD(params, lr=1e-3) if params else None

    def step() -> None:
        if opt is not None:
            opt.zero_grad(set_to_none=True)
        z.grad = None
        quantized, _, aux_loss = fn(z)
        loss = nn.functional.mse_loss(quantized, target) + aux_loss
        loss.backward()
        if opt is not None:
            opt.step()

    return step


def main() -> None:
    parser = bench_parser(__doc__.splitlines()[0], samples=7, inner=1, warmup=1)
    args = parser.parse_args()
    device = setup(args)

    rows = []
    for label, size, shape in CASES + (CUDA_CASES if device.type == "cuda" else []):
        dim, bits = shape[-1], int(math.log2(size))
        z = torch.randn(shape, device=device, requires_grad=True)
        target = torch.randn(shape, device=device)
        ours, ours_q = ours_fn(size, dim, device)
        theirs, theirs_q = theirs_fn(size, dim, device)
        if dim != bits:  # same projection weights on both sides
            theirs.load_state_dict(ours.state_dict(), strict=False)
        for train in (True, False):  # before the SGD steps move the weights apart
            ours.train(train), theirs.train(train)
            check_agreement(ours_q, theirs_q, z, bits)
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
        f"vector-quantize-pytorch {vqp_version()}; {SETTINGS}, inv_temperature {INV_TEMPERATURE}; "
        f"median of {args.samples} samples x {args.inner} calls after {args.warmup} warm-up"
    )
    print()
    print("| case | ours ms | theirs ms | ratio (theirs/ours) |")
    print("|---|---:|---:|---:|")
    for case, o, t, r in rows:
        print(f"| {case} | {o:.3f} | {t:.3f} | {r:.2f} |")


if __name__ == "__main__":
    main()
