"""Benchmark: `tok encode` / `tok decode` throughput, whole command against the bare model calls.

    python bench/encode.py --run runs/fsq_mnist                 # MNIST test split, 10,000 images
    python bench/encode.py --run runs/fsq_mnist --threads 1
    python bench/encode.py --run runs/fsq_mnist --video-run runs/video_fsq_movingmnist
    python bench/encode.py --run /tmp/fsq --limit 1000 --video-run /tmp/video --videos 16 \\
        --samples 1 --warmup 0                                   # a quick check

Images (``--run RUN``, a trained image run such as ``recipes/fsq_mnist.toml``'s):
the MNIST test split (``mnist:test``; ``--limit N``: its first N images), three ways:

1. **CLI**: ``tok encode mnist:test --tokenizer RUN --out TMP`` and ``tok decode TMP
   --out TMP2`` as subprocesses, whole process — interpreter, imports, loading the
   model and the data, encoding, writing token shards (decode: PNG files);
2. **API**: the same two calls in this process (``tok.encode.encode``,
   ``tok.encode.decode_files``) — the CLI without the process start-up;
3. **loop**: ``Tokenizer.encode`` / ``Tokenizer.decode`` over the same images, already
   in memory, in batches of ``--batch-size`` (256, the CLI default), fp32 (what ``tok
   encode`` runs) and under bf16 autocast.

The differences between the rows are what each layer costs: CLI − API is the process
start-up (``tok --version`` alone is shown too), API − loop is loading the model and
the data and writing the files. ``--threads N`` applies to all of them (the CLI gets
``OMP_NUM_THREADS=N``). Then bf16 against fp32: how many tokens bf16 changes, and the
PSNR of the decoded images.

Videos (``--video-run RUN``, optional, e.g. ``recipes/video_fsq_movingmnist.toml``'s):
the same for ``movingmnist:test`` (Moving MNIST as the CLI builds it for the
tokenizer's input shape: the recipe's data; ``--videos N``: the first N videos), in
tokens/s. ``tok decode`` writes one ``--video-format`` file (mp4) per video.

In-process timings are medians of ``--samples`` passes (after ``--warmup``), the cases
interleaved; CLI and API timings are medians of ``--cli-repeats`` runs (0 skips both).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from _common import bench_parser, cpu_model, measure, setup

from tok.data.sources import open_source
from tok.encode import decode_files, encode
from tok.metrics import psnr
from tok.models import Tokenizer


def tok_command() -> list[str]:
    """The ``tok`` executable of this environment (else ``python -m tok``)."""
    exe = Path(sys.executable).with_name("tok")
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "tok"]


def child_env(threads: int | None) -> dict[str, str]:
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    return env


def run_cli(args: list[str], env: dict[str, str]) -> float:
    """Seconds of ``tok ARGS`` as a subprocess; exits with its message if it fails."""
    start = time.perf_counter()
    done = subprocess.run([*tok_command(), *args], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"tok {' '.join(args)} failed ({done.returncode}):\n{done.stderr}")
    return seconds


def time_whole(
    src: str, run: str, count: int, *, args, video_format: str
) -> dict[str, float | None]:
    """Median seconds of the CLI (subprocesses) and the API (in process): encode, decode."""
    env = child_env(args.threads)
    limit = ["--limit", str(count)] if count else []
    common = ["--batch-size", str(args.batch_size), "--device", args.device, "--no-progress"]
    times: dict[str, list[float]] = {
        k: [] for k in ("start", "cli enc", "cli dec", "api enc", "api dec")
    }
    for _ in range(args.cli_repeats):
        with tempfile.TemporaryDirectory(prefix="tok-encode-bench-") as tmp:
            t = Path(tmp)
            times["start"].append(run_cli(["--version"], env))
            tokens_dir, files_dir = str(t / "cli_tokens"), str(t / "cli_files")
            enc = ["encode", src, "--tokenizer", run, "--out", tokens_dir, *limit, *common]
            dec = ["decode", tokens_dir, "--out", files_dir, "--video-format", video_format]
            times["cli enc"].append(run_cli(enc, env))
            times["cli dec"].append(run_cli([*dec, *common], env))
            shutil.rmtree(t / "cli_files")  # keep the disk use of a run to one copy
            start = time.perf_counter()
            encode(
                src,
                out=t / "api_tokens",
                tokenizer=run,
                batch_size=args.batch_size,
                limit=count,
                progress=False,
                device=args.device,
            )
            times["api enc"].append(time.perf_counter() - start)
            start = time.perf_counter()
            decode_files(
                t / "api_tokens",
                out=t / "api_files",
                batch_size=args.batch_size,
                video_format=video_format,
                progress=False,
                device=args.device,
            )
            times["api dec"].append(time.perf_counter() - start)
    return {k: statistics.median(v) if v else None for k, v in times.items()}


def autocast(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def compare_and_time(model: Tokenizer, images: torch.Tensor, *, args, device: torch.device) -> dict:
    """bf16 vs fp32 (tokens, PSNR), then median seconds of each loop."""
    bs = args.batch_size

    def floats(i: int) -> torch.Tensor:  # uint8 → float in [0, 1], as tok encode does
        return images[i : i + bs].to(device).float().div_(255)

    def encode_all(precision: str) -> torch.Tensor:
        with autocast(precision, device):
            return torch.cat([model.encode(floats(i)).cpu() for i in range(0, len(images), bs)])

    def decode_all(tokens: torch.Tensor, precision: str, keep: bool = False) -> list[torch.Tensor]:
        out = []
        with autocast(precision, device):
            for i in range(0, len(tokens), bs):
                recon = model.decode(tokens[i : i + bs].to(device))
                if keep:  # the timed passes keep nothing
                    out.append(psnr(recon, floats(i)).cpu())
        return out

    tokens = {p: encode_all(p) for p in ("fp32", "bf16")}
    quality = {}
    for p in ("fp32", "bf16"):
        quality[p] = {
            "differ": int((tokens[p] != tokens["fp32"]).sum()),
            "own": torch.cat(decode_all(tokens[p], p, keep=True)).mean().item(),
            "from fp32": torch.cat(decode_all(tokens["fp32"], p, keep=True)).mean().item(),
        }
    steps: dict[tuple[str, str], Callable[[], None]] = {}
    for p in ("fp32", "bf16"):
        steps[("encode", p)] = lambda p=p: encode_all(p)
        steps[("decode", p)] = lambda p=p: decode_all(tokens["fp32"], p)
    ms = measure(steps, device, warmup=args.warmup, samples=args.samples)
    return {
        "total": tokens["fp32"].numel(),
        "quality": quality,
        "seconds": {k: v / 1e3 for k, v in ms.items()},
    }


def report(
    what: str, unit: str, n: int, tokens_per_item: int, whole: dict, loop: dict, *, video: bool
) -> None:
    """Print the throughput table and the bf16 table of one tokenizer."""

    def rate(seconds: float | None, per: int = 1) -> str:
        return f"{n * per / seconds:,.0f}" if seconds else "–"

    def sec(seconds: float | None) -> str:
        return f"{seconds:.2f}" if seconds is not None else "–"

    extra = " | encode tokens/s" if video else ""
    print(f"| {what} | encode s | encode {unit}/s{extra} | decode s | decode {unit}/s |")
    print("|---|---:|---:|" + ("---:|" if video else "") + "---:|---:|")

    def row(name: str, enc: float | None, dec: float | None) -> None:
        tok_rate = f" | {rate(enc, tokens_per_item)}" if video else ""
        print(f"| {name} | {sec(enc)} | {rate(enc)}{tok_rate} | {sec(dec)} | {rate(dec)} |")

    s = loop["seconds"]
    if whole["cli enc"] is not None:
        row("CLI `tok encode` / `tok decode` (subprocess)", whole["cli enc"], whole["cli dec"])
        row(
            "API `tok.encode.encode` / `decode_files` (in process)",
            whole["api enc"],
            whole["api dec"],
        )
    for p in ("fp32", "bf16"):
        row(f"loop `Tokenizer.encode` / `.decode`, {p}", s[("encode", p)], s[("decode", p)])
    if whole["cli enc"] is not None:
        print(
            f"| ↳ CLI − API: process start-up (`tok --version` alone: {whole['start']:.2f} s) | "
            f"{whole['cli enc'] - whole['api enc']:.2f} | |"
            + (" |" if video else "")
            + f" {whole['cli dec'] - whole['api dec']:.2f} | |"
        )
        print(
            "| ↳ API − loop fp32: loading model + data, writing files | "
            f"{whole['api enc'] - s[('encode', 'fp32')]:.2f} | |"
            + (" |" if video else "")
            + f" {whole['api dec'] - s[('decode', 'fp32')]:.2f} | |"
        )
    print()
    total = loop["total"]
    print(
        "| precision | tokens differing from fp32 | PSNR dB, decoding its own tokens | "
        "PSNR dB, decoding the fp32 tokens |"
    )
    print("|---|---:|---:|---:|")
    for p in ("fp32", "bf16"):
        q = loop["quality"][p]
        print(
            f"| {p} | {q['differ']:,} of {total:,} ({q['differ'] / total:.3%}) | "
            f"{q['own']:.3f} | {q['from fp32']:.3f} |"
        )
    print()


def bench(src: str, run: str, count: int, *, args, device: torch.device, video: bool) -> None:
    model = Tokenizer.load(run, map_location=device).eval()
    dataset, split = open_source(src, input_shape=model.input_shape, split="test")
    keys = dataset.keys(split)
    keys = keys[:count] if count else keys
    images = dataset.read(split, keys).images
    fmt = args.video_format if video else "mp4"
    whole = time_whole(src, run, count, args=args, video_format=fmt)
    loop = compare_and_time(model, images, args=args, device=device)
    per_item = loop["total"] // len(images)
    unit = "videos" if video else "images"
    print(
        f"{src} ({len(images):,} {unit} {tuple(images.shape[1:])}) with {run}: tokens "
        f"{(*model.grid, model.quantizer.num_streams)} per item, batches of {args.batch_size}"
    )
    print()
    report(f"{unit} ({len(images):,})", unit, len(images), per_item, whole, loop, video=video)


def main() -> None:
    parser = bench_parser(__doc__.splitlines()[0], samples=3, inner=None, warmup=1)
    parser.add_argument("--run", required=True, help="a trained image run (MNIST)")
    parser.add_argument("--video-run", default=None, help="a trained video run (Moving MNIST)")
    parser.add_argument("--src", default="mnist:test", help="image source (default mnist:test)")
    parser.add_argument(
        "--video-src", default="movingmnist:test", help="video source (default movingmnist:test)"
    )
    parser.add_argument("--limit", type=int, default=0, help="first N images (default: all)")
    parser.add_argument("--videos", type=int, default=0, help="first N videos (default: all)")
    parser.add_argument(
        "--batch-size", type=int, default=256, help="items per forward pass (default 256)"
    )
    parser.add_argument(
        "--cli-repeats", type=int, default=1, help="runs of the CLI and the API (0: skip them)"
    )
    parser.add_argument(
        "--video-format", default="mp4", choices=["mp4", "gif"], help="what tok decode writes"
    )
    args = parser.parse_args()
    device = setup(args)

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    print(
        f"device: {device} ({where}); torch {torch.__version__}; threads {torch.get_num_threads()}; "
        f"loop: median of {args.samples} passes after {args.warmup} warm-up; "
        f"CLI/API: median of {args.cli_repeats} run(s)"
    )
    print()
    bench(args.src, args.run, args.limit, args=args, device=device, video=False)
    if args.video_run:
        bench(args.video_src, args.video_run, args.videos, args=args, device=device, video=True)


if __name__ == "__main__":
    main()
