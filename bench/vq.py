"""Benchmark: tok's VQ against vector-quantize-pytorch's VectorQuantize, same run, same codebook.

    pip install -e '.[bench]'
    python bench/vq.py                  # CPU, torch's default thread count
    python bench/vq.py --threads 1      # one thread
    python bench/vq.py --device cuda

Case: ``VectorQuantize(dim=64, codebook_size=1024, decay=0.99,
commitment_weight=0.25)`` and ``tok``'s ``VQ`` with the same arguments, on
``z (64, 256, 64)`` — 16,384 vectors against 1,024 codes. Our codebook is
copied into theirs (``_codebook.embed`` and ``embed_avg``), and before any
timing both must give *equal* indices on the same input in eval mode.

- training step: a leading ``Linear(64, 64)`` (the same weights on every
  side), the quantizer in train mode with its EMA codebook update, MSE
  against a fixed target plus the quantizer's loss, backward, SGD step;
- inference: eval mode under ``torch.no_grad``; reported as tokens/s too.

A third column, "plain", is the textbook PyTorch VQ-EMA written out in a few
lines below (``cdist`` + ``argmin``, ``index_add_`` sums): a yardstick for what
straightforward PyTorch costs. Timings are medians of interleaved samples
(ours, theirs, plain, ours, …) after warm-up, so a background load hits every
side alike. Ratio = theirs / ours (above 1: ours is faster).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from _common import bench_parser, cpu_model, infer_step, measure, setup, vqp_version
from torch import nn

from tok.plugins.vq import VQ

DIM, CODEBOOK_SIZE, DECAY, COMMITMENT = 64, 1024, 0.99, 0.25
SHAPE = (64, 256, 64)


class PlainVQ(nn.Module):
    """Textbook VQ-VAE with EMA in plain PyTorch: the yardstick column."""

    def __init__(self, codebook: torch.Tensor, decay: float, eps: float = 1e-5) -> None:
        super().__init__()
        self.decay, self.eps = decay, eps
        self.register_buffer("codebook", codebook.clone())
        self.register_buffer("cluster_size", torch.ones(len(codebook)))
        self.register_buffer("embed_sum", codebook.clone())

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = z.reshape(-1, z.shape[-1])
        idx = torch.cdist(x.detach(), self.codebook).argmin(-1)
        q = self.codebook[idx]
        if self.training:
            with torch.no_grad():
                k = len(self.codebook)
                counts = torch.bincount(idx, minlength=k).float()
                sums = torch.zeros_like(self.codebook).index_add_(0, idx, x.detach())
                self.cluster_size.lerp_(counts, 1 - self.decay)
                self.embed_sum.lerp_(sums, 1 - self.decay)
                n = self.cluster_size.sum()
                size = (self.cluster_size + self.eps) / (n + k * self.eps) * n
                self.codebook.copy_(self.embed_sum / size[:, None])
        loss = COMMITMENT * F.mse_loss(x, q)
        return (x + (q - x).detach()).view_as(z), idx.view(z.shape[:-1]), loss


def build(device: torch.device) -> dict[str, tuple[nn.Module, Callable]]:
    """The three quantizers with one codebook; each paired with ``z -> (codes, indices, loss)``."""
    from vector_quantize_pytorch import VectorQuantize

    ours = VQ(dim=DIM, codebook_size=CODEBOOK_SIZE, decay=DECAY, commitment_weight=COMMITMENT)
    theirs = VectorQuantize(
        dim=DIM, codebook_size=CODEBOOK_SIZE, decay=DECAY, commitment_weight=COMMITMENT
    )
    with torch.no_grad():
        theirs._codebook.embed.copy_(ours.codebook[None])
        theirs._codebook.embed_avg.copy_(ours.codebook[None])
    plain = PlainVQ(ours.codebook, DECAY)

    def ours_fn(z: torch.Tensor) -> tuple:
        out = ours(z)
        return out.quantized, out.indices[..., 0], out.aux_loss

    return {
        "ours": (ours.to(device), ours_fn),
        "theirs": (theirs.to(device), lambda z: theirs(z)[:3]),
        "plain": (plain.to(device), plain),
    }


def check_equal_indices(sides: dict, z: torch.Tensor) -> None:
    """Every side, in eval mode, gives the same indices on ``z`` — else the timings mean nothing."""
    with torch.no_grad():
        results = {name: fn(z) for name, (_, fn) in sides.items()}
    ref_codes, ref_idx, _ = results["ours"]
    for name, (codes, idx, _) in results.items():
        unequal = int((idx.long() != ref_idx).sum())
        if unequal:
            raise SystemExit(f"{name}: {unequal} of {idx.numel()} indices differ from ours")
        torch.testing.assert_close(codes, ref_codes, rtol=0, atol=1e-5)


def train_step(module: nn.Module, fn: Callable, z: torch.Tensor, target: torch.Tensor):
    torch.manual_seed(1)  # the same leading layer on every side
    layer = nn.Linear(DIM, DIM).to(z.device)
    params = list(layer.parameters()) + [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-3)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        codes, _, aux = fn(layer(z))
        (F.mse_loss(codes, target) + aux).backward()
        opt.step()

    return step


def main() -> None:
    parser = bench_parser(__doc__.splitlines()[0], samples=11, inner=None, warmup=2)
    args = parser.parse_args()
    device = setup(args)

    sides = build(device)
    z = torch.randn(SHAPE, device=device)
    target = torch.randn(SHAPE, device=device)
    for module, _ in sides.values():
        module.eval()
    check_equal_indices(sides, z)

    rows = []
    for mode in ("train", "inference"):
        steps = {}
        for name, (module, fn) in sides.items():
            module.train(mode == "train")
            steps[name] = (
                train_step(module, fn, z, target) if mode == "train" else infer_step(fn, z)
            )
        rows.append((mode, measure(steps, device, warmup=args.warmup, samples=args.samples)))

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    tokens = SHAPE[0] * SHAPE[1]
    print(
        f"device: {device} ({where}); torch {torch.__version__}; threads {torch.get_num_threads()}; "
        f"vector-quantize-pytorch {vqp_version()}; "
        f"dim {DIM}, codebook {CODEBOOK_SIZE}, z {SHAPE}; indices equal on the same input: yes; "
        f"median of {args.samples} interleaved samples after {args.warmup} warm-up"
    )
    print()
    print(
        "| mode | ours ms | theirs ms | plain ms | ratio (theirs/ours) | "
        "ours tokens/s | theirs tokens/s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for mode, ms in rows:
        o, t, p = ms["ours"], ms["theirs"], ms["plain"]
        print(
            f"| {mode} | {o:.1f} | {t:.1f} | {p:.1f} | {t / o:.2f} | "
            f"{tokens / o * 1e3:,.0f} | {tokens / t * 1e3:,.0f} |"
        )


if __name__ == "__main__":
    main()
