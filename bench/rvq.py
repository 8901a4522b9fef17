"""Benchmark: tok's residual and multi-group VQ against vector-quantize-pytorch, same run.

    pip install -e '.[bench]'
    python bench/rvq.py                        # CPU, torch's default thread count
    python bench/rvq.py --threads 1            # one thread
    python bench/rvq.py --straight-through     # theirs without the rotation trick
    python bench/rvq.py --device cuda

Cases, on ``z (64, 256, 64)`` with ``codebook_size=1024``, ``decay=0.99``,
``commitment_weight=0.25``, EMA codebooks, no k-means, no dead-code restart:

- residual: ``tok.plugins.rvq.ResidualVQ(dim=64, depth=4)`` vs
  ``vector_quantize_pytorch.ResidualVQ(dim=64, num_quantizers=4)``;
- grouped: ``tok.plugins.mgvq.MultiGroupVQ(dim=64, groups=4)`` vs
  ``vector_quantize_pytorch.GroupedResidualVQ(dim=64, groups=4,
  num_quantizers=1)`` — four 16-channel VQs side by side.

Before timing, our (random) codebooks are copied into theirs — ``embed`` and
``embed_avg`` of each level's codebook, ``cluster_size`` left at ones as in
ours — and the indices of both, in eval mode, are checked equal:

- residual: theirs are ``(b, n, q)``, the same layout as ours;
- grouped: theirs are ``(groups, b, n, num_quantizers)``, ours ``(b, n, groups)``,
  so ``ours[..., g] == theirs[g, ..., 0]``. Both take group ``g`` from channels
  ``[16 g, 16 g + 16)`` (their ``x.chunk(groups, dim=-1)``, our ``chunk``).

Indices are compared exactly; a mismatch (which could only come from a near tie
rounded differently: they take ``sqrt(|x|^2 + |c|^2 - 2 x·c)``, we
``|c|^2 - 2 x·c``) is reported with the float64 distance gap. The script exits
non-zero when the indices differ.

Timed: a training step (zero_grad, forward, MSE against a fixed target plus the
aux/commitment losses, backward into ``z``; the EMA update runs in the forward;
neither side has parameters, so there is no optimizer step) and inference
(eval mode, ``torch.no_grad``). vector-quantize-pytorch's defaults include the
rotation trick (``rotation_trick=True``); ``--straight-through`` builds theirs
with ``rotation_trick=False``, the plain straight-through estimator we use.
Medians of interleaved samples (ours, theirs, ours, …) after warm-up. Ratio =
theirs / ours (above 1: ours is faster).
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch
from _common import bench_parser, cpu_model, infer_step, measure, setup, vqp_version
from torch import nn

from tok.plugins.mgvq import MultiGroupVQ
from tok.plugins.rvq import ResidualVQ

SHAPE = (64, 256, 64)
DIM, CODES, LEVELS, GROUPS = 64, 1024, 4, 4
COMMON = {"codebook_size": CODES, "decay": 0.99, "commitment_weight": 0.25}


def _load_codebook(their_codebook: nn.Module, codebook: torch.Tensor) -> None:
    """Copy one of our codebooks ``(k, c)`` into a vector-quantize-pytorch ``Codebook``."""
    with torch.no_grad():
        their_codebook.embed.copy_(codebook[None])
        their_codebook.embed_avg.copy_(codebook[None])
        their_codebook.cluster_size.fill_(1.0)


def residual_pair(device: torch.device, straight_through: bool):
    from vector_quantize_pytorch import ResidualVQ as TheirResidualVQ

    ours = ResidualVQ(dim=DIM, depth=LEVELS, **COMMON).to(device)
    extra = {"rotation_trick": False} if straight_through else {}
    theirs = TheirResidualVQ(dim=DIM, num_quantizers=LEVELS, **COMMON, **extra).to(device)
    for i, layer in enumerate(theirs.layers):
        _load_codebook(layer._codebook, ours.level(i).codebook)

    def their_indices(out) -> torch.Tensor:
        return out[1]  # b n q

    return ours, theirs, their_indices


def grouped_pair(device: torch.device, straight_through: bool):
    from vector_quantize_pytorch import GroupedResidualVQ

    ours = MultiGroupVQ(dim=DIM, groups=GROUPS, **COMMON).to(device)
    extra = {"rotation_trick": False} if straight_through else {}
    theirs = GroupedResidualVQ(dim=DIM, groups=GROUPS, num_quantizers=1, **COMMON, **extra).to(
        device
    )
    for g, rvq in enumerate(theirs.rvqs):
        _load_codebook(rvq.layers[0]._codebook, ours.vqs[g].codebook)

    def their_indices(out) -> torch.Tensor:
        return out[1][..., 0].movedim(0, -1)  # (g b n 1) → b n g

    return ours, theirs, their_indices


def check_indices(label: str, ours, theirs, their_indices, z: torch.Tensor) -> str:
    """Eval-mode indices of both sides, compared exactly; returns a one-line verdict."""
    ours.eval(), theirs.eval()
    with torch.no_grad():
        a = ours(z).indices
        b = their_indices(theirs(z))
    if a.shape != b.shape:
        return f"{label}: FAIL, index shapes {tuple(a.shape)} vs {tuple(b.shape)}"
    differ = int((a != b).sum())
    if differ == 0:
        return f"{label}: indices equal ({a.numel()} of {a.numel()}, shape {tuple(a.shape)})"
    return f"{label}: FAIL, {differ} of {a.numel()} indices differ"


def train_step(ours_or_theirs: str, module: nn.Module, z: torch.Tensor, target: torch.Tensor):
    mse = nn.functional.mse_loss

    def step() -> None:
        z.grad = None
        out = module(z)
        if ours_or_theirs == "ours":
            loss = mse(out.quantized, target) + out.aux_loss
        else:
            loss = mse(out[0], target) + out[2].sum()
        loss.backward()

    return step


def main() -> None:
    parser = bench_parser(__doc__.splitlines()[0], samples=9, inner=2, warmup=2)
    parser.add_argument(
        "--straight-through",
        action="store_true",
        help="build theirs with rotation_trick=False (our estimator)",
    )
    args = parser.parse_args()
    device = setup(args)

    z = torch.randn(SHAPE, device=device, requires_grad=True)
    target = torch.randn(SHAPE, device=device)

    verdicts, rows = [], []
    cases: list[tuple[str, Callable]] = [
        (f"ResidualVQ, depth {LEVELS}", residual_pair),
        (f"MultiGroupVQ / GroupedResidualVQ, {GROUPS} groups", grouped_pair),
    ]
    for label, make in cases:
        ours, theirs, their_indices = make(device, args.straight_through)
        verdicts.append(check_indices(label, ours, theirs, their_indices, z.detach()))
        for mode in ("train", "inference"):
            if mode == "train":
                ours.train(), theirs.train()
                steps = {
                    "ours": train_step("ours", ours, z, target),
                    "theirs": train_step("theirs", theirs, z, target),
                }
            else:
                ours.eval(), theirs.eval()
                steps = {
                    "ours": infer_step(ours, z),
                    "theirs": infer_step(theirs, z),
                }
            ms = measure(steps, device, warmup=args.warmup, samples=args.samples, inner=args.inner)
            rows.append((f"{mode}: {label}", ms["ours"], ms["theirs"], ms["theirs"] / ms["ours"]))

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    estimator = (
        "rotation_trick=False" if args.straight_through else "their defaults (rotation trick)"
    )
    print(
        f"device: {device} ({where}); torch {torch.__version__}; threads {torch.get_num_threads()}; "
        f"vector-quantize-pytorch {vqp_version()} ({estimator}); z {SHAPE}, codebook_size {CODES}; "
        f"median of {args.samples} samples x {args.inner} calls after {args.warmup} warm-up"
    )
    print()
    for verdict in verdicts:
        print(f"- {verdict}")
    print()
    print("| case | ours ms | theirs ms | ratio (theirs/ours) |")
    print("|---|---:|---:|---:|")
    for case, o, t, r in rows:
        print(f"| {case} | {o:.2f} | {t:.2f} | {r:.2f} |")
    if any("FAIL" in v for v in verdicts):
        sys.exit(1)


if __name__ == "__main__":
    main()
