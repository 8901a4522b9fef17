"""Benchmark: what the perceptual and adversarial losses buy on real photos.

    python bench/vqgan_photos.py RUN RUN_CONTROL [--out bench/vqgan_photos.png]

``RUN`` is a trained ``recipes/vqgan_photos.toml`` run and ``RUN_CONTROL`` one of
``recipes/vqgan_photos_control.toml`` (the same tokenizer, data, token rate and schedule
without those two losses). Both are evaluated on the same test crops (their recipe's
protocol: the 2,048 fixed 64×64 crops of the 11 photos in ``photos/test``), with the
weights ``tok encode`` uses (the EMA average), in fp32.

Per crop: PSNR (dB), SSIM, and the feature distance on **EfficientNet-Lite2** and on
**Lite1** (:func:`tok.image_metrics.feature_distance`); over the set: the Fréchet
distance on Lite2's head features (``fd_effnet_lite2``, as ``tok eval`` computes it).
The perceptual loss trains against **Lite0**, so neither evaluation network is the one
trained against. The spread: paired bootstrap over crops (``--resamples`` draws of the
2,048 crops with replacement, the same draw for both runs) gives a 95 % interval of each
difference; the Fréchet distance is recomputed on ``--fd-resamples`` draws; and the
number of the 11 test photos on whose crops the full recipe wins. A picture of inputs
above both reconstructions is written to ``--out`` and into both run folders
(``compare.png``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from tok.features import efficientnet_lite
from tok.image_metrics import feature_distance, frechet_distance, ssim
from tok.media import layout
from tok.metrics import psnr
from tok.run import Run

sys.path.insert(0, str(Path(__file__).parent))
from _common import cpu_model  # noqa: E402


@torch.no_grad()
def measure(run: Run, x: torch.Tensor, batch: int = 256) -> dict[str, torch.Tensor]:
    """Per-crop metrics of ``run``'s tokenizer on ``x`` (float ``(n, 3, h, w)``) and its
    reconstructions, and Lite2's pooled head features of both."""
    tokenizer = run.tokenizer()
    lite2, lite1 = efficientnet_lite("lite2"), efficientnet_lite("lite1")
    out: dict[str, list[torch.Tensor]] = {}
    for start in range(0, len(x), batch):
        xs = x[start : start + batch]
        ys = tokenizer(xs).reconstruction.clamp(0, 1)
        fx, fy = lite2(xs), lite2(ys)
        values = {
            "recon": ys,
            "psnr": psnr(ys, xs),
            "ssim": ssim(ys, xs),
            "feature_distance_lite2": feature_distance(ys, xs, net=lite2),
            "feature_distance_lite1": feature_distance(ys, xs, net=lite1),
            "head_x": fx[-1].mean((2, 3)),
            "head_y": fy[-1].mean((2, 3)),
        }
        for k, v in values.items():
            out.setdefault(k, []).append(v.float())
    return {k: torch.cat(v) for k, v in out.items()}


def interval(values: torch.Tensor) -> list[float]:
    """The 2.5 % and 97.5 % quantiles."""
    lo, hi = torch.quantile(values.double(), torch.tensor([0.025, 0.975], dtype=torch.float64))
    return [float(lo), float(hi)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("control", type=Path)
    parser.add_argument("--out", type=Path, default=Path("bench/vqgan_photos.png"))
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--fd-resamples", type=int, default=30)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    runs = {"full": Run.open(args.run), "control": Run.open(args.control)}
    dataset = runs["full"].dataset()
    keys = dataset.keys("test")
    x = dataset.read("test", keys).floats()
    m = {name: measure(run, x) for name, run in runs.items()}
    g = torch.Generator().manual_seed(0)
    n = len(x)
    draws = torch.randint(n, (args.resamples, n), generator=g)
    result: dict = {"crops": n, "cpu": cpu_model(), "threads": torch.get_num_threads()}
    for metric in ("psnr", "ssim", "feature_distance_lite2", "feature_distance_lite1"):
        a, b = m["full"][metric], m["control"][metric]
        diff = a - b
        photos = sorted({k.split("@")[0] for k in keys})
        per_photo = [
            float(diff[[i for i, k in enumerate(keys) if k.split("@")[0] == p]].mean())
            for p in photos
        ]
        better = (lambda d: d > 0) if metric in ("psnr", "ssim") else (lambda d: d < 0)
        result[metric] = {
            "full": float(a.mean()),
            "control": float(b.mean()),
            "full_std": float(a.std()),
            "control_std": float(b.std()),
            "difference": float(diff.mean()),
            "difference_95": interval(diff[draws].mean(1)),
            "photos_full_better": sum(better(d) for d in per_photo),
            "photos": len(photos),
        }
    fds = {}
    for name in runs:
        hx, hy = m[name]["head_x"], m[name]["head_y"]
        whole = frechet_distance(hx, hy)
        again = [
            frechet_distance(hx[d], hy[d])
            for d in torch.randint(n, (args.fd_resamples, n), generator=g)
        ]
        fds[name] = {"value": whole, "resampled_95": interval(torch.tensor(again))}
    result["fd_effnet_lite2"] = fds
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    # the picture: 12 crops (one per photo first), inputs above control above full
    shown, seen = [], set()
    for i, k in enumerate(keys):
        if k.split("@")[0] not in seen:
            seen.add(k.split("@")[0])
            shown.append(i)
    shown = (shown + [i for i in range(n) if i not in shown])[:12]
    blocks = [x[shown], m["control"]["recon"][shown], m["full"]["recon"][shown]]
    label = "rows: test crops · control (L1 alone) · full (L1 + perceptual + adversarial)"
    image = layout(blocks, cols=len(shown), label=label)
    for path in (args.out, args.run / "compare.png", args.control / "compare.png"):
        image.save(path)
    print(f"rows: inputs, control ({args.control}), full ({args.run}) -> {args.out}")


if __name__ == "__main__":
    main()
