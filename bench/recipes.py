"""Benchmark: every recipe trained in full, timed, and measured — with a reference step.

    python bench/recipes.py                                    # every recipe, fp32 and bf16
    python bench/recipes.py fsq_mnist vq_mnist --bf16          # fp32 only
    python bench/recipes.py --bf16 fsq_mnist vq_mnist          # every recipe in fp32, two in bf16
    python bench/recipes.py --calibrate-only                   # just the reference step

For each recipe and precision: ``tok train RECIPE --set train.precision=P`` as a
subprocess (whole-process wall seconds: start-up, data, training, evaluations,
checkpoints), then ``tok eval RUN --json`` on the whole test split (PSNR, usage).

**The reference in the same run.** Time budgets are set on a reference machine
(2-core AMD EPYC, AVX2, no AMX), where one fp32 training step of the *old*
``fsq_mnist`` model — conv ``[32, 64, 128]``, blocks ``[0, 1, 1]``, GroupNorm, FSQ
8·5·5·5, batch 64, contiguous (NCHW) layout, as tok trained it before this benchmark
existed — took 0.39 s (issue #12). The script times that same step here
(:func:`reference_step`, median of ``--calibration-steps``, before and after the
recipes) and estimates each recipe's fp32 time on the reference machine as
``wall × 0.39 s / reference step here``. The estimate assumes the recipe speeds up
like that step does, which holds for conv and matmul work alike only roughly: it is
a guide, stated as one.

Budgets (reference machine, fp32): 5 minutes for the 2D MNIST recipes and the VAEs,
10 for ``seq1d``, 15 for video, 2 for ``tiny_vae_mnist``, 20 for the photo recipes. Continuous recipes report
their test negative ELBO (nats per image) and active latent dimensions instead of
codebook usage.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from einops import rearrange

from tok.recipe import list_recipes, load_recipe
from tok.train import build_tokenizer

sys.path.insert(0, str(Path(__file__).parent))
from _common import cpu_model  # noqa: E402

REFERENCE_STEP_S = 0.39  # the old fsq_mnist fp32 step on the reference machine (issue #12)
OLD_FSQ_MNIST = [  # the recipe before issue #12, applied to today's recipes/fsq_mnist.toml
    "model.channels=[32,64,128]",
    "model.blocks=[0,1,1]",
    "model.patch_size=1",
    "train.batch_size=64",
]


def budget_s(name: str) -> int:
    """The recipe's budget on the reference machine, in seconds."""
    if name.startswith("seq1d"):
        return 600
    if name.startswith("video"):
        return 900
    if name.startswith("vqgan_photos"):
        return 1200  # issue 15: 20 minutes on 2 cores
    if name == "tiny_vae_mnist":
        return 120  # issue 14: test -ELBO <= 100 nats in 2 minutes on 2 cores, fp32
    return 300


def reference_step(steps: int) -> float:
    """Median seconds of one fp32 training step of the old fsq_mnist model, run the way
    tok ran it then: NCHW tensors, batch 64, AdamW, grad clip 1."""
    recipe = load_recipe("fsq_mnist", OLD_FSQ_MNIST)
    tokenizer = build_tokenizer(recipe, (1, 28, 28)).to(memory_format=torch.contiguous_format)
    arch, quantizer = tokenizer.architecture, tokenizer.quantizer
    optimizer = torch.optim.AdamW(tokenizer.parameters(), lr=1e-3)
    x = torch.rand(64, 1, 28, 28)

    def step() -> None:
        z = rearrange(arch.encoder(x), "b d h w -> b h w d")  # NCHW all the way, as before
        out = quantizer(z)
        recon = arch.decoder(rearrange(out.quantized, "b h w d -> b d h w"))
        loss = torch.nn.functional.mse_loss(recon, x) + out.aux_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(tokenizer.parameters(), 1.0)
        optimizer.step()

    for _ in range(3):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def tok(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tok", *args], capture_output=True, text=True, env=os.environ
    )


def train_and_eval(name: str, precision: str, out: Path) -> dict:
    run = out / f"{name}_{precision}"
    start = time.perf_counter()
    proc = tok("train", name, "--no-progress", "--set", f"train.precision='{precision}'",
               "--set", f"output.dir='{run}'")  # fmt: skip
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{name} ({precision}) failed:\n{proc.stderr}")
    result = json.loads(tok("eval", str(run), "--json").stdout)
    latent = {k: result[k] for k in ("neg_elbo", "kl", "active_dims", "latent_dim") if k in result}
    return {"wall": wall, "psnr": result["psnr"], "usage": result.get("usage"), "run": str(run),
            **latent}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("recipes", nargs="*", help="recipe names (default: every recipe)")
    parser.add_argument(
        "--bf16", nargs="*", default=None, help="recipes also trained in bf16 (default: all)"
    )
    parser.add_argument("--calibration-steps", type=int, default=30)
    parser.add_argument("--calibrate-only", action="store_true")
    parser.add_argument("--out", type=Path, help="keep the runs here (default: a temp folder)")
    args = parser.parse_args()
    names = args.recipes or [info.name for info in list_recipes()]
    print(f"machine: {cpu_model()}, {torch.get_num_threads()} threads, torch {torch.__version__}")

    before = reference_step(args.calibration_steps)
    print(f"reference step (old fsq_mnist, fp32, NCHW, batch 64): {before * 1e3:.1f} ms")
    if args.calibrate_only:
        return
    out = args.out or Path(tempfile.mkdtemp(prefix="tok-recipes-"))
    bf16 = names if args.bf16 is None else args.bf16
    runs = [(n, "fp32") for n in names] + [(n, "bf16") for n in names if n in bf16]
    rows = [(n, p, train_and_eval(n, p, out)) for n, p in runs]
    after = reference_step(args.calibration_steps)
    ref = (before + after) / 2
    print(f"reference step after the runs: {after * 1e3:.1f} ms (mean used: {ref * 1e3:.1f} ms)")
    print(f"runs in {out}\n")
    print(
        "| recipe | precision | wall (here) | est. reference machine | budget | test PSNR "
        "| usage or active dims | test -ELBO |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for name, precision, r in rows:
        est = f"{r['wall'] * REFERENCE_STEP_S / ref:.0f} s" if precision == "fp32" else "—"
        if "neg_elbo" in r:  # a continuous tokenizer: nats per image, active dimensions
            health = f"{r['active_dims']}/{r['latent_dim']} dims"
            elbo = f"{r['neg_elbo']:.2f} nats (KL {r['kl']:.2f})"
        else:
            health, elbo = f"{r['usage'] * 100:.1f} %", "—"
        print(
            f"| {name} | {precision} | {r['wall']:.0f} s | {est} | {budget_s(name)} s "
            f"| {r['psnr']:.2f} dB | {health} | {elbo} |"
        )


if __name__ == "__main__":
    main()
