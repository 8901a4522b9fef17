"""Benchmark: video tokenizer throughput (frames/s) of encode and decode, Moving MNIST sizes.

    python bench/video.py                          # untrained recipe model, CPU, torch's threads
    python bench/video.py --threads 1
    python bench/video.py --run runs/video_fsq_movingmnist   # a trained tokenizer
    python bench/video.py --device cuda

Input: ``(batch, 1, 17, 64, 64)`` videos (``--batch``, default 8) → tokens
``(batch, 5, 16, 16, 1)`` with the recipe ``recipes/video_fsq_movingmnist.toml``.
``encode`` is ``Tokenizer.encode`` (architecture encoder + FSQ indices) and
``decode`` is ``Tokenizer.decode`` (indices → codes → decoder, clamped), both
under ``torch.no_grad`` in eval mode.

Cases, timed interleaved in one run so that a background load hits them alike:

- the recipe's architecture (full causal ``Conv3d``) in fp32 — what ``tok
  encode`` does — and under bf16 autocast;
- the same architecture with ``factorized = true`` ((2+1)D convolutions, as
  Cosmos-Tokenizer), fp32 and bf16 — the design choice the recipe made.

Prints a markdown table of milliseconds per batch and frames per second.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from _common import bench_parser, cpu_model, measure, setup

from tok.models import Tokenizer
from tok.recipe import load_recipe
from tok.train import build_tokenizer

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "video_fsq_movingmnist.toml"
INPUT = (1, 17, 64, 64)


def tokenizers(run: str | None, device: torch.device) -> dict[str, Tokenizer]:
    """The tokenizers to time: the recipe's (or ``run``'s) and its factorised twin."""
    if run:
        main = Tokenizer.load(run)
        config = main.config()
    else:
        main = build_tokenizer(load_recipe(RECIPE), INPUT)
        config = main.config()
    twin_config = {**config, "architecture": dict(config["architecture"])}
    twin_config["architecture"]["config"] = {
        **config["architecture"]["config"],
        "factorized": not config["architecture"]["config"].get("factorized", False),
    }
    twin = Tokenizer.from_config(twin_config)
    name = "factorized" if twin_config["architecture"]["config"]["factorized"] else "full Conv3d"
    main_name = "full Conv3d" if name == "factorized" else "factorized"
    return {
        f"{main_name} ({'trained' if run else 'recipe'})": main.eval().to(device),
        name: twin.eval().to(device),
    }


def main() -> None:
    parser = bench_parser(__doc__.splitlines()[0], samples=5, inner=None, warmup=1)
    parser.add_argument("--batch", type=int, default=8, help="videos per call (default 8)")
    parser.add_argument("--run", default=None, help="a trained run folder (default: untrained)")
    args = parser.parse_args()
    device = setup(args)

    gen = torch.Generator().manual_seed(0)
    x = torch.rand((args.batch, *INPUT), generator=gen).to(device)
    frames = args.batch * INPUT[1]
    steps, shapes = {}, {}
    for name, tok in tokenizers(args.run, device).items():
        tokens = tok.encode(x)
        shapes[name] = tuple(tokens.shape)
        for precision in ("fp32", "bf16"):

            def ctx(precision=precision):
                if precision == "fp32":
                    return contextlib.nullcontext()
                return torch.autocast(device_type=device.type, dtype=torch.bfloat16)

            def enc(tok=tok, ctx=ctx):
                with ctx():
                    tok.encode(x)

            def dec(tok=tok, ctx=ctx, tokens=tokens):
                with ctx():
                    tok.decode(tokens)

            steps[(name, precision, "encode")] = enc
            steps[(name, precision, "decode")] = dec
    ms = measure(steps, device, warmup=args.warmup, samples=args.samples)

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    print(
        f"device: {device} ({where}); torch {torch.__version__}; threads {torch.get_num_threads()}; "
        f"input {(args.batch, *INPUT)} -> tokens {next(iter(shapes.values()))}; "
        f"median of {args.samples} samples after {args.warmup} warm-up"
    )
    print()
    print(
        "| architecture | precision | encode ms | encode frames/s | decode ms | decode frames/s |"
    )
    print("|---|---|---:|---:|---:|---:|")
    for name in shapes:
        for precision in ("fp32", "bf16"):
            e = ms[(name, precision, "encode")]
            d = ms[(name, precision, "decode")]
            print(
                f"| {name} | {precision} | {e:.1f} | {frames / e * 1e3:.0f} | "
                f"{d:.1f} | {frames / d * 1e3:.0f} |"
            )


if __name__ == "__main__":
    main()
