"""How the defaults of recipes/fsq_mnist.toml were chosen (not a test).

Runs several architecture / batch-size variants of the recipe for a fixed
number of steps and prints test PSNR and codebook usage every ``--every``
steps. Step counts are the same math on any device, so a GPU can produce the
PSNR-versus-steps curves quickly; the CPU cost of one step of each variant is
measured separately (``--time-cpu``) to turn steps into minutes on 2 cores.

    python bench/fsq_mnist_sweep.py --device cpu --threads 1 bs32 bs16_2400
    python bench/fsq_mnist_sweep.py --time-cpu            # ms per step of every variant
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from tok.device import resolve_precision
from tok.recipe import load_recipe
from tok.train import build_tokenizer, train

OLD = [  # the recipe before issue #12: conv [32, 64, 128] at full resolution, batch 64
    "model.patch_size=1",
    "model.channels=[32,64,128]",
    "model.blocks=[0,1,1]",
    "train.batch_size=64",
    "train.steps=2000",
]
P2 = ["train.batch_size=64"]  # today's model (patch 2, [64, 128], blocks [1, 1]) at batch 64

#: overrides of today's recipes/fsq_mnist.toml (patch 2, [64, 128], batch 16, 3,000 steps);
#: the variants tried on the way there (bench/RESULTS.md, "Fast on every CPU")
VARIANTS: dict[str, list[str]] = {
    "base": [],
    "old": OLD,
    "old_bs32": [*OLD, "train.batch_size=32", "train.steps=1400"],
    "p4_128": [
        *P2,
        "model.patch_size=4",
        "model.channels=[128]",
        "model.blocks=[1]",
        "train.steps=1800",
    ],  # fmt: skip
    "p2_b01": [*P2, "model.blocks=[0,1]", "train.steps=1300"],
    "bs32": ["train.batch_size=32", "train.steps=1600"],
    "bs32_lr3e-3": ["train.batch_size=32", "train.steps=1600", "train.lr=3e-3"],
    "bs16_2400": ["train.steps=2400"],
    "bs16_2400_lr3e-3": ["train.steps=2400", "train.lr=3e-3"],
    "bs8": ["train.batch_size=8", "train.steps=6000"],
    "bf16": ["train.precision='bf16'"],
}


def time_cpu(names: list[str], recipe_path: str) -> None:
    for name in names:
        recipe = load_recipe(recipe_path, VARIANTS[name])
        model = build_tokenizer(recipe, (1, 28, 28))
        bf16 = resolve_precision(recipe.train.precision, torch.device("cpu")) == "bf16"
        opt = torch.optim.AdamW(model.parameters(), 1e-3, fused=True)  # as tok train does
        x = torch.rand(recipe.train.batch_size, 1, 28, 28)
        for i in range(40):
            if i == 10:
                t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                out = model(x)
                loss = (out.reconstruction.float() - x).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        ms = (time.perf_counter() - t0) / 30 * 1000
        steps = recipe.train.steps
        row = {"variant": name, "batch": recipe.train.batch_size, "steps": steps}
        row |= {"cpu_ms_per_step": round(ms, 1), "training_s": round(ms * steps / 1000)}
        print(json.dumps(row), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipe", default="recipes/fsq_mnist.toml")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", type=int, default=0, help="0: each variant's own")
    ap.add_argument("--every", type=int, default=0, help="evaluate every N steps (0: half-way)")
    ap.add_argument("--time-cpu", action="store_true")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("variants", nargs="*", default=list(VARIANTS))
    args = ap.parse_args()
    if args.time_cpu:
        time_cpu(args.variants, args.recipe)
        return
    for name in args.variants:
        with tempfile.TemporaryDirectory() as tmp:
            steps = args.steps or load_recipe(args.recipe, VARIANTS[name]).train.steps
            recipe = load_recipe(
                args.recipe,
                [
                    *VARIANTS[name],
                    f"train.steps={steps}",
                    f"train.eval_every={args.every or steps // 2}",
                    f"train.checkpoint_every={steps}",
                    f"train.device='{args.device}'",
                    f"train.threads={args.threads}",
                    f"output.dir='{tmp}/run'",
                ],
            )
            t0 = time.perf_counter()
            train(recipe, progress=False)
            rows = [
                json.loads(x) for x in Path(f"{tmp}/run/metrics.jsonl").read_text().splitlines()
            ]
            curve = [
                (r["step"], round(r["psnr"], 2), round(r["usage"], 3))
                for r in rows
                if r["split"] == "test"
            ]
            print(
                json.dumps(
                    {"variant": name, "seconds": round(time.perf_counter() - t0, 1), "curve": curve}
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
