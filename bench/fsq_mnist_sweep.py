"""How the defaults of recipes/fsq_mnist.toml were chosen (not a test).

Runs several architecture / batch-size variants of the recipe for a fixed
number of steps and prints test PSNR and codebook usage every ``--every``
steps. Step counts are the same math on any device, so a GPU can produce the
PSNR-versus-steps curves quickly; the CPU cost of one step of each variant is
measured separately (``--time-cpu``) to turn steps into minutes on 2 cores.

    python bench/fsq_mnist_sweep.py --device cuda --steps 4000
    python bench/fsq_mnist_sweep.py --time-cpu
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

VARIANTS: dict[str, list[str]] = {
    "base": [],
    "fp32": ["train.precision='fp32'"],
    "group": ["model.norm='group'"],
    "b012": ["model.blocks=[0,1,2]"],
    "b022": ["model.blocks=[0,2,2]"],
    "b111": ["model.blocks=[1,1,1]"],
    "small": ["model.channels=[16,32,64]", "model.blocks=1"],
    "wide": ["model.channels=[64,128,128]"],
    "c16": ["model.channels=[16,64,128]"],
    "bs32": ["train.batch_size=32"],
    "bs128": ["train.batch_size=128"],
    "lr4e-3": ["train.lr=4e-3"],
    "proj16": ["model.latent_dim=16"],
    "l1": ["train.loss='l1'"],
    "mid": ["model.channels=[24,48,96]"],
    "bf16": ["train.precision='bf16'"],
    "bf16small": ["train.precision='bf16'", "model.channels=[16,32,64]", "model.blocks=[1,1,1]"],
    "bf16mid": ["train.precision='bf16'", "model.channels=[24,48,96]"],
    "bf16b022": ["train.precision='bf16'", "model.blocks=[0,2,2]"],
    "bf16wide": ["train.precision='bf16'", "model.channels=[32,96,192]"],
    "bf16clip": ["train.precision='bf16'", "train.grad_clip=1.0"],
    "bf16groupclip": ["train.precision='bf16'", "train.grad_clip=1.0", "model.norm='group'"],
    "smallnone": ["model.channels=[16,32,64]", "model.blocks=[1,1,1]"],
    "lr5e-3": ["train.lr=5e-3"],
}


def time_cpu(names: list[str], recipe_path: str) -> None:
    for name in names:
        recipe = load_recipe(recipe_path, VARIANTS[name])
        model = build_tokenizer(recipe, (1, 28, 28))
        bf16 = resolve_precision(recipe.train.precision, torch.device("cpu")) == "bf16"
        opt = torch.optim.AdamW(model.parameters(), 1e-3)
        x = torch.rand(recipe.train.batch_size, 1, 28, 28)
        for i in range(30):
            if i == 10:
                t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                out = model(x)
                loss = (out.reconstruction.float() - x).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        ms = (time.perf_counter() - t0) / 20 * 1000
        print(
            json.dumps(
                {"variant": name, "cpu_ms_per_step": round(ms, 1), "batch": recipe.train.batch_size}
            ),
            flush=True,
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipe", default="recipes/fsq_mnist.toml")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--every", type=int, default=250)
    ap.add_argument("--time-cpu", action="store_true")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("variants", nargs="*", default=list(VARIANTS))
    args = ap.parse_args()
    if args.time_cpu:
        time_cpu(args.variants, args.recipe)
        return
    for name in args.variants:
        with tempfile.TemporaryDirectory() as tmp:
            recipe = load_recipe(
                args.recipe,
                [
                    *VARIANTS[name],
                    f"train.steps={args.steps}",
                    f"train.eval_every={args.every}",
                    f"train.checkpoint_every={args.steps}",
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
