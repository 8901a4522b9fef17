"""Benchmark: `tok train` and `tok encode` at 1 and 2 processes (torchrun, gloo, 1 thread
each), samples/s.

    python bench/scale.py                        # fsq_mnist, 400 steps, batch 32, 2 rounds
    python bench/scale.py --steps 200 --batch-size 16 --rounds 1
    python bench/scale.py --recipe recipes/vq_mnist.toml
    python bench/scale.py --encode-only          # encoding alone (a 50-step tokenizer)

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

Encoding: the MNIST training split (60,000 digits, ``--encode-limit``) is encoded
with the first round's tokenizer, alone (``tok encode mnist:train --split train
--threads 1``) and as two processes (``tok encode … --nproc 2``: each encodes every
other shard of 1,000 rows), alternating. Encoding logs no clock, so its samples/s are
the whole command's: start-up (about 3 s alone, more under torchrun) is included. The
two outputs are compared byte for byte.
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


def timed(cmd: list[str]) -> float:
    """Run ``cmd`` (one thread per process) from the repository; its wall seconds."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return wall


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
    wall = timed(cmd)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["split"] == "train"]
    first, last = train_rows[0], train_rows[-1]
    span = last["time"] - first["time"]
    samples = (last["step"] - first["step"]) * batch
    return {"wall": wall, "span": span, "samples_per_s": samples / span, "loss": last["loss"]}


def encode(run: Path, out: Path, nproc: int, limit: int) -> dict:
    """Encode the MNIST training split with ``run``; return wall seconds and samples/s."""
    cmd = [sys.executable, "-m", "tok", "encode", "mnist:train", "--split", "train"]
    cmd += ["--tokenizer", str(run), "--out", str(out), "--limit", str(limit)]
    cmd += ["--shard-size", "1000", "--batch-size", "256", "--no-progress"]
    cmd += ["--threads", "1"] if nproc == 1 else ["--nproc", str(nproc)]
    wall = timed(cmd)
    return {"wall": wall, "samples_per_s": limit / wall}


def same_files(a: Path, b: Path) -> bool:
    names = sorted(p.name for p in a.iterdir())
    return names == sorted(p.name for p in b.iterdir()) and all(
        (a / n).read_bytes() == (b / n).read_bytes() for n in names
    )


def table(results: dict[int, list[dict]], what: str) -> None:
    one = statistics.median(x["samples_per_s"] for x in results[1])
    two = statistics.median(x["samples_per_s"] for x in results[2])
    print(f"\n| processes × threads | {what} samples/s (median) | whole command s (median) |")
    print("|---|---:|---:|")
    for nproc in (1, 2):
        sps = statistics.median(x["samples_per_s"] for x in results[nproc])
        wall = statistics.median(x["wall"] for x in results[nproc])
        print(f"| {nproc} × 1 | {sps:,.0f} | {wall:.1f} |")
    print(f"\n{what}: speed-up {two / one:.2f}×, scaling efficiency {two / (2 * one):.0%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default=str(ROOT / "recipes" / "fsq_mnist.toml"))
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=32, help="global batch (default 32)")
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--encode-limit", type=int, default=60000, metavar="N")
    parser.add_argument(
        "--encode-only", action="store_true", help="train one 50-step tokenizer, time encoding"
    )
    args = parser.parse_args()

    print(
        f"device: cpu ({cpu_model()}); torch {torch.__version__}; 1 thread per process; "
        f"{os.cpu_count()} cores; recipe {Path(args.recipe).name}; {args.steps} steps of a "
        f"global batch of {args.batch_size}; fp32; encoding {args.encode_limit:,} digits; "
        f"{args.rounds} round(s), order alternating\n"
    )
    trained: dict[int, list[dict]] = {1: [], 2: []}
    encoded: dict[int, list[dict]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = Path(tmp) / "tokenizer"
        if args.encode_only:
            train(args.recipe, tokenizer, 1, 50, args.batch_size, 10)
        for r in range(args.rounds if not args.encode_only else 0):
            order = (1, 2) if r % 2 == 0 else (2, 1)
            for nproc in order:
                run = Path(tmp) / f"r{r}_p{nproc}"
                res = train(args.recipe, run, nproc, args.steps, args.batch_size, args.log_every)
                trained[nproc].append(res)
                print(
                    f"round {r + 1}, {nproc} process(es): {res['samples_per_s']:,.0f} samples/s "
                    f"training, {res['wall']:.1f} s whole command, final loss {res['loss']:.5f}",
                    flush=True,
                )
                if not tokenizer.exists():
                    tokenizer = run
        for r in range(args.rounds):
            order = (1, 2) if r % 2 == 0 else (2, 1)
            for nproc in order:
                out = Path(tmp) / f"tokens_r{r}_p{nproc}"
                res = encode(tokenizer, out, nproc, args.encode_limit)
                encoded[nproc].append(res)
                print(
                    f"round {r + 1}, {nproc} process(es): {res['samples_per_s']:,.0f} samples/s "
                    f"encoding, {res['wall']:.1f} s whole command",
                    flush=True,
                )
        same = all(
            same_files(Path(tmp) / f"tokens_r{r}_p1", Path(tmp) / f"tokens_r{r}_p2")
            for r in range(args.rounds)
        )
    if not args.encode_only:
        table(trained, "training")
    table(encoded, "encoding")
    print(f"2-process token folders byte-identical to 1-process: {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
