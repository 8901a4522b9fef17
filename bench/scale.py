"""Benchmark: `tok train` at 1 and 2 processes (torchrun, gloo, 1 thread each), samples/s.

    python bench/scale.py                        # fsq_mnist, 400 steps, batch 32, 2 rounds
    python bench/scale.py --steps 200 --batch-size 16 --rounds 1
    python bench/scale.py --recipe recipes/vq_mnist.toml

Each round trains the recipe twice from scratch with the same seed and global
batch: alone (``tok train … --set train.threads=1``) and as two processes
(``torchrun --standalone --nproc-per-node=2 -m tok train …``, one thread each, as
torchrun sets), in alternating order. Training throughput is read from the run's
own ``metrics.jsonl`` clock (``time`` at the last step minus ``time`` at the first
logged step), so interpreter start-up, data loading and process-group set-up are
left out and reported separately as the whole command's wall time. Evaluations and
checkpoints are pushed past the end (one of each, at the last step, outside the
measured span).

Scaling efficiency = samples/s with 2 processes / (2 × samples/s alone): 100 % is
perfect; what is lost is the gradient all-reduce, the per-step loss all-reduce and
each process's smaller share of the batch (convolutions on 16 rows are less
efficient than on 32). On a 2-core machine both processes have a core each; the
comparison is 1 core against 2.

Encoding is not measured: ``tok encode`` does not run over several processes yet.
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

sys.path.insert(0, str(Path(__file__).parent))
from _common import cpu_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def train(recipe: str, run: Path, nproc: int, steps: int, batch: int, log_every: int) -> dict:
    """Train; return whole-command wall seconds and the steady training span."""
    sets = [
        f"train.steps={steps}",
        f"train.batch_size={batch}",
        f"train.log_every={log_every}",
        f"train.eval_every={steps}",
        f"train.checkpoint_every={steps}",
        "train.precision='fp32'",
        f"output.dir='{run}'",
    ]
    if nproc == 1:
        sets.append("train.threads=1")
    args = ["tok", "train", recipe, "--no-progress", *[a for s in sets for a in ("--set", s)]]
    if nproc == 1:
        cmd = [sys.executable, "-m", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        cmd += [f"--nproc-per-node={nproc}", "-m", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["split"] == "train"]
    first, last = train_rows[0], train_rows[-1]
    span = last["time"] - first["time"]
    samples = (last["step"] - first["step"]) * batch
    return {"wall": wall, "span": span, "samples_per_s": samples / span, "loss": last["loss"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default=str(ROOT / "recipes" / "fsq_mnist.toml"))
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=32, help="global batch (default 32)")
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    print(
        f"device: cpu ({cpu_model()}); torch {torch.__version__}; 1 thread per process; "
        f"{os.cpu_count()} cores; recipe {Path(args.recipe).name}; {args.steps} steps of a "
        f"global batch of {args.batch_size}; fp32; {args.rounds} round(s), order alternating\n"
    )
    results: dict[int, list[dict]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            order = (1, 2) if r % 2 == 0 else (2, 1)
            for nproc in order:
                run = Path(tmp) / f"r{r}_p{nproc}"
                res = train(args.recipe, run, nproc, args.steps, args.batch_size, args.log_every)
                results[nproc].append(res)
                print(
                    f"round {r + 1}, {nproc} process(es): {res['samples_per_s']:,.0f} samples/s "
                    f"training, {res['wall']:.1f} s whole command, final loss {res['loss']:.5f}",
                    flush=True,
                )
    one = statistics.median(x["samples_per_s"] for x in results[1])
    two = statistics.median(x["samples_per_s"] for x in results[2])
    print()
    print("| processes × threads | training samples/s (median) | whole command s (median) |")
    print("|---|---:|---:|")
    for nproc in (1, 2):
        sps = statistics.median(x["samples_per_s"] for x in results[nproc])
        wall = statistics.median(x["wall"] for x in results[nproc])
        print(f"| {nproc} × 1 | {sps:,.0f} | {wall:.1f} |")
    print(f"\nspeed-up {two / one:.2f}×, scaling efficiency {two / (2 * one):.0%}")


if __name__ == "__main__":
    main()
