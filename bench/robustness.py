"""What the robustness rules cost: FSQ, VQ and LFQ before and after, in one process.

The quantizers of a git revision (``--before``, default ``38ac5b5``: before non-finite
inputs were masked and projections computed in float32) are loaded from that
revision's files next to the current ones, with that revision's ``batch_code_metrics``,
and timed in turns on the same inputs: a training step (forward, MSE + aux loss,
backward) and eval-mode inference. Prints a markdown table of medians.

    python bench/robustness.py --threads 1
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def old_modules(rev: str, folder: Path) -> dict:
    """``fsq``, ``vq``, ``lfq`` of ``rev``, importable beside today's (hooks removed)."""

    def show(path: str) -> str:
        return subprocess.run(
            ["git", "show", f"{rev}:{path}"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout

    (folder / "old_metrics.py").write_text(show("tokenizers/metrics.py"))
    _load("old_metrics", folder / "old_metrics.py")
    modules = {}
    for name in ("fsq", "vq", "lfq"):
        source = show(f"plugins/{name}.py")
        source = source.replace("from tok.metrics import", "from old_metrics import")
        source = source.replace("@hookimpl\ndef register_quantizers", "def _unused")
        (folder / f"old_{name}.py").write_text(source)
        modules[name] = _load(f"old_{name}", folder / f"old_{name}.py")
    return modules


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="38ac5b5", help="the git revision to compare with")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--samples", type=int, default=15)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from tok.plugins import fsq, lfq, vq

    with tempfile.TemporaryDirectory() as tmp:
        old = old_modules(args.before, Path(tmp))
        cases = [
            ("fsq [8,5,5,5], z (64,256,4)", "fsq", "FSQ", {"levels": [8, 5, 5, 5]}, 4),
            ("fsq 64->4->64, z (64,256,64)", "fsq", "FSQ", {"levels": [8, 5, 5, 5], "dim": 64}, 64),
            ("vq 1024 codes, z (64,256,64)", "vq", "VQ", {"dim": 64, "codebook_size": 1024}, 64),
            ("lfq 2^10, z (64,256,10)", "lfq", "LFQ", {"codebook_size": 1024}, 10),
        ]
        new = {"fsq": fsq, "vq": vq, "lfq": lfq}
        print(
            f"torch {torch.__version__}, {torch.get_num_threads()} threads, before = {args.before}"
        )
        print("| case | mode | before (ms) | after (ms) | after / before |")
        print("|---|---|---:|---:|---:|")
        for label, module, cls, cfg, dim in cases:
            z = torch.randn(64, 256, dim)
            for mode in ("train", "eval"):
                torch.manual_seed(0)
                a = getattr(old[module], cls)(**cfg)
                torch.manual_seed(0)
                b = getattr(new[module], cls)(**cfg)
                times = {id(a): [], id(b): []}

                def step(q, mode=mode, z=z):
                    if mode == "train":
                        q.train()
                        out = q(z.clone().requires_grad_(True))
                        (out.quantized.square().mean() + out.aux_loss).backward()
                    else:
                        q.eval()
                        with torch.no_grad():
                            q(z)

                for q in (a, b, a, b):
                    step(q)
                for _ in range(args.samples):
                    for q in (a, b):
                        start = time.perf_counter()
                        step(q)
                        times[id(q)].append(time.perf_counter() - start)
                ta, tb = (statistics.median(times[id(q)]) * 1e3 for q in (a, b))
                print(f"| {label} | {mode} | {ta:.2f} | {tb:.2f} | {tb / ta:.2f} |")


if __name__ == "__main__":
    main()
