"""The ``tok`` command. The only place where a :class:`TokError` becomes an exit code.

Each ``cmd_*`` function turns parsed options into one call of the library and
prints its result; :func:`build_parser` declares every command's options.

Why this module is longer than 500 lines: it is the whole command-line
surface, and argparse's option declarations (with their help texts) take
about half of it; splitting the commands from their options would make
readers look in two places for one command.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import warnings
from typing import Any, NoReturn

from . import __version__
from .errors import RecipeError, TokError

EPILOG = "Run `tok COMMAND --help` for a command's options. Docs: README.md, docs/."


def _fmt_table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()
    out = [line, "  ".join("-" * w for w in widths)]
    out += [
        "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    ]
    return "\n".join(out)


# commands --------------------------------------------------------------------


def _env_rank() -> int:
    """The rank torchrun gave this process (``RANK``; 0 alone), before, during and after
    its process group."""
    return int(os.environ.get("RANK", "0"))


def _env_several() -> bool:
    """Whether torchrun started this process as one of several (``WORLD_SIZE`` > 1); read
    from the environment, as :func:`tok.distributed.launched` does, without importing
    torch."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def cmd_train(args: argparse.Namespace) -> int:
    from .distributed import launch
    from .health import percent
    from .recipe import load_recipe
    from .run import Run
    from .train import train

    if args.nproc is not None:  # the same command, as N processes started by torchrun
        again = [args.recipe] if args.recipe else []
        again += [a for item in args.set for a in ("--set", item)]
        again += ["--resume", args.resume] if args.resume else []
        again += ["--no-progress"] * args.no_progress + ["--debug"] * args.debug
        return launch(["train", *again], args.nproc)
    if args.resume:
        if args.recipe:
            raise TokError("give either a recipe or --resume RUN, not both")
        if any(item.split("=", 1)[0].strip() == "output.dir" for item in args.set):
            raise TokError(
                f"--set output.dir cannot move a resumed run: it stays in {args.resume} "
                f"(move the folder itself, then resume it there)"
            )
        try:
            recipe = Run.open(args.resume).recipe(args.set)
        except RecipeError as exc:  # name the --set values, not only the file they amend
            if not args.set:
                raise
            where = f"{exc.source} with --set {' '.join(args.set)}"
            raise RecipeError(exc.problems, source=where) from None
    elif args.recipe:
        recipe = load_recipe(args.recipe, args.set)
    else:
        raise TokError(
            "tok train needs a recipe file (e.g. recipes/fsq_mnist.toml) or --resume RUN"
        )
    result = train(recipe, resume=bool(args.resume), progress=not args.no_progress)
    if _env_rank():  # under torchrun, rank 0 reports
        return 0
    ev = result.eval
    print(f"run folder: {result.run_dir}  (step {result.step})")
    if ev and "kl" in ev:  # a continuous tokenizer
        print(f"test {_latent_summary(ev)}")
    elif ev:
        print(
            f"test psnr {ev['psnr']:.2f} dB  usage {percent(ev['usage'])}  "
            f"perplexity {ev['perplexity']:.1f}  bits/pixel {ev['bits_per_pixel']:.3f}  "
            f"({ev['images']} images)"
        )
    return 0


def _latent_summary(ev: dict) -> str:
    """One line of a continuous tokenizer's evaluation (:func:`tok.run.evaluate_latents`)."""
    elbo = f"-ELBO {ev['neg_elbo']:.2f} nats  " if "neg_elbo" in ev else ""
    return (
        f"{elbo}KL {ev['kl']:.2f} nats  psnr {ev['psnr']:.2f} dB  active dims "
        f"{ev['active_dims']}/{ev['latent_dim']}  ({ev['images']} images)"
    )


def _default_tokenizer(src: str) -> str:
    """The run ``tok encode SRC`` uses without ``--tokenizer``: the complete run under
    ``./runs`` with the newest tokenizer for what ``src`` holds (images or videos)."""
    from .data.folder import walk_once
    from .data.sources import source_media
    from .run import Run

    with walk_once():
        media = source_media(src) or "image"
    run = Run.latest("runs", media=media)
    if run is None:
        example = "video_fsq_movingmnist" if media == "video" else "fsq_mnist"
        raise TokError(
            f"no --tokenizer given and no complete {media} tokenizer under ./runs; train one "
            f"(`tok train {example}`) or name one with --tokenizer RUN"
        )
    if not _env_rank():  # under torchrun, rank 0 says which
        print(f"tokenizer: {run.path} (the newest complete {media} run under ./runs)")
    return str(run.path)


def cmd_encode(args: argparse.Namespace) -> int:
    from .distributed import launch
    from .encode import encode

    tokenizer = args.tokenizer or _default_tokenizer(args.src)
    if args.nproc is not None:  # the same command, as N processes started by torchrun
        again = [args.src, "--out", args.out, "--tokenizer", tokenizer, "--split", args.split]
        again += ["--shard-size", str(args.shard_size), "--batch-size", str(args.batch_size)]
        again += ["--resize", args.resize, "--limit", str(args.limit), "--device", args.device]
        again += ["--fps", str(args.fps)] if args.fps is not None else []
        again += ["--threads", str(args.threads)] if args.threads else []
        again += ["--latent-dtype", args.latent_dtype] if args.latent_dtype else []
        again += ["--tile", str(args.tile), "--window", str(args.window)]
        again += ["--overlap", str(args.overlap)] if args.overlap is not None else []
        again += ["--no-progress"] * args.no_progress + ["--debug"] * args.debug
        return launch(["encode", *again], args.nproc)
    result = encode(
        args.src,
        out=args.out,
        tokenizer=tokenizer,
        split=args.split,
        shard_size=args.shard_size,
        batch_size=args.batch_size,
        resize=args.resize,
        fps=args.fps,
        limit=args.limit,
        progress=not args.no_progress,
        device=args.device,
        threads=args.threads,
        latent_dtype=args.latent_dtype,
        tile=args.tile,
        overlap=args.overlap,
        window=args.window,
    )
    if _env_rank():  # under torchrun, rank 0 reports
        return 0
    grid = "(each its own grid)" if result["grid"] == "ragged" else result["grid"]
    rows = (
        f"latents {grid}x{result['latent_dim']} ({result['dtype']})"
        if result["kind"] == "latents"
        else f"tokens {grid}x{result['streams']}"
    )
    print(
        f"wrote {result['items']} rows of {rows} in {result['shards']} shard(s) to {args.out}"
        + (f" ({result['resumed']} shard(s) were already done)" if result["resumed"] else "")
    )
    return 0


def cmd_decode(args: argparse.Namespace) -> int:
    from .encode import decode_files

    result = decode_files(
        args.tokens,
        out=args.out,
        tokenizer=args.tokenizer,
        force=args.force,
        batch_size=args.batch_size,
        video_format=args.video_format,
        fps=args.fps,
        progress=not args.no_progress,
        device=args.device,
        tile=args.tile,
        overlap=args.overlap,
    )
    if result["kind"] == "videos":
        preview = f" and the preview {result['preview']}" if result["preview"] else ""
        print(f"wrote {result['items']} {result['format']} videos to {args.out}{preview}")
    else:
        print(f"wrote {result['items']} images to {args.out}")
    return 0


def cmd_shards(args: argparse.Namespace) -> int:
    from .data.pack import pack_folder

    result = pack_folder(
        args.src, out=args.out, per_shard=args.per_shard, progress=not args.no_progress
    )
    print(f"wrote {result['samples']} samples in {result['shards']} shards to {args.out}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .device import resolve_device
    from .health import percent, stream_table
    from .run import Run

    device = resolve_device(args.device, option="--device")
    quality = None
    if not args.fast:
        from .image_metrics import ImageQuality

        quality = ImageQuality(
            features=args.features, lpips_net=args.lpips_net, lpips_weights=args.lpips_weights,
            inception_weights=args.inception_weights, device=device,
        )  # fmt: skip
    run = Run.open(args.run)
    result = run.evaluate(split=args.split, samples=args.samples, device=device, quality=quality)
    result.pop("counts", None)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    if "kl" in result:  # a continuous tokenizer: nats per image
        print(f"{args.run}: {result['images']} {args.split} images, per image")
        if "neg_elbo" in result:
            print(f"  reconstruction  {result['recon_nll']:.2f} nats (-log p(x|z), the run's loss)")
        print(f"  KL              {result['kl']:.2f} nats")
        if "neg_elbo" in result:
            print(f"  -ELBO           {result['neg_elbo']:.2f} nats")
        print(f"  psnr            {result['psnr']:.2f} dB{_spread(result, 'psnr')}")
        for line in _quality_lines(result) if quality else []:
            print(line)
        print(
            f"  active dims     {result['active_dims']} of {result['latent_dim']} "
            f"(KL ≥ {result['active_threshold']:g} nats)"
            + (f"; inactive: {', '.join(map(str, result['inactive']))}" * bool(result["inactive"]))
        )
        return 0
    print(f"{args.run}: {result['images']} {args.split} images")
    print(f"  psnr            {result['psnr']:.2f} dB{_spread(result, 'psnr')}")
    for line in _quality_lines(result) if quality else []:
        print(line)
    print(f"  bits per pixel  {result['bits_per_pixel']:.3f}")
    print(f"  codebook usage  {percent(result['usage'])}")
    print(f"  perplexity      {result['perplexity']:.1f}")
    print(f"  tokens (N)      {result['streams'][0]['tokens']} per stream")
    headers, rows = stream_table(result["streams"])
    print()
    print(_fmt_table(rows, headers))
    return 0


def _spread(result: dict[str, Any], name: str, over: str = "items") -> str:
    std = result.get(f"{name}_std")
    return f"  (± {std:.4g} std over {over})" if std is not None else ""


def _quality_lines(result: dict[str, Any]) -> list[str]:
    """``tok eval``'s lines for the :class:`tok.image_metrics.ImageQuality` metrics: each
    value with its spread, or ``name: unavailable (reason)``."""
    protocol = result["protocol"]
    over = "frames" if protocol["measured"].startswith("video") else "images"
    lines = []
    for name in protocol["networks"]:
        if name in result["unavailable"]:
            lines.append(f"  {name}: unavailable ({result['unavailable'][name]})")
        elif name in result:
            spread = _spread(result, name, over)
            if f"{name}_std" not in result:
                spread = f"  (over {protocol['measured_count']} {protocol['measured']})"
            if name == "ms_ssim":
                scales = f"{protocol['ms_ssim_scales']} scales"
                spread = f"{spread[:-1]}; {scales})" if spread else f"  ({scales})"
            lines.append(f"  {name:<15} {result[name]:.4f}{spread}")
    return lines


def cmd_inspect(args: argparse.Namespace) -> int:
    from .device import resolve_device
    from .health import collapse_summary, inspect_run, stream_table

    report = inspect_run(
        args.run,
        split=args.split,
        samples=args.samples,
        threshold=args.threshold,
        out=args.out,
        device=resolve_device(args.device, option="--device"),
    )
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    if "kl_dims" in report:  # a continuous tokenizer: its latent dimensions
        return _print_latent_health(args.run, report)
    print(
        f"{args.run}: codebook health of {report['recipe']} on {report['images']} "
        f"{report['split']} images, N = {report['streams'][0]['tokens']} tokens per stream "
        f"(psnr {report['psnr']:.2f} dB, {report['bits_per_pixel']:.3f} bits/pixel)"
    )
    headers, rows = stream_table(report["streams"], report["threshold"])
    print()
    print(_fmt_table(rows, headers))
    print()
    threshold = f"{report['threshold'] * 100:g}%"
    for i in report["collapsed"]:
        print(
            f"COLLAPSED: stream {i}: {collapse_summary(report['streams'][i])}, below the "
            f"collapse threshold {threshold} of min(K, N)"
        )
    if not report["collapsed"]:
        print(
            f"every stream uses at least {threshold} of the min(K, N) codes its tokens could "
            "use (the collapse threshold)"
        )
    evals = len(report["history"][0]["step"]) if report["history"] else 0
    print(f"usage over {evals} evaluation(s) during training: {report['files']['usage_over_time']}")
    print(f"usage histogram: {report['files']['histogram']}")
    print(f"all numbers: {report['files']['json']}")
    return 0


def cmd_interpolate(args: argparse.Namespace) -> int:
    from .device import resolve_device
    from .latent_tools import interpolate

    result = interpolate(
        args.run,
        args.source,
        args.target,
        steps=args.steps,
        out=args.out,
        device=resolve_device(args.device, option="--device"),
    )
    print(
        f"wrote {result['out']}: original A, {len(result['t'])} decoded steps (t = 0 to 1), "
        f"original B; linear in {result['latent']}"
    )
    return 0


def cmd_latent_map(args: argparse.Namespace) -> int:
    from .device import resolve_device
    from .latent_tools import latent_map

    result = latent_map(
        args.run,
        out=args.out,
        split=args.split,
        samples=args.samples,
        grid=args.grid,
        device=resolve_device(args.device, option="--device"),
    )
    if result["explained"] is None:
        plane = "its 2 dimensions"
    else:
        px, py = (100 * e for e in result["explained"])
        plane = f"PC1 and PC2 of {result['dims']} dimensions ({px:.1f}% and {py:.1f}% of variance)"
    print(
        f"wrote {result['out']}: {result['images']} {args.split} images in {plane} of {result['latent']}"
    )
    if not result["labelled"]:
        print("the run's dataset has no labels: the points are not coloured")
    return 0


def _print_latent_health(run: str, report: dict[str, Any]) -> int:
    """``tok inspect`` of a continuous run (:func:`tok.posterior.inspect_latents`)."""
    from .posterior import dimension_table

    nats = [f"KL {report['kl']:.2f} nats per image"]
    if "neg_elbo" in report:
        nats += [f"reconstruction {report['recon_nll']:.2f}", f"-ELBO {report['neg_elbo']:.2f}"]
    print(
        f"{run}: latent dimensions of {report['recipe']} ({report['bottleneck']}, "
        f"{report['latent_dim']} dimensions) on {report['images']} {report['split']} images "
        f"({', '.join(nats)}; psnr {report['psnr']:.2f} dB)"
    )
    threshold = f"{report['threshold']:g} nats"
    stochastic = report["stochastic"]
    headers, rows = dimension_table(report["kl_dims"], report["threshold"] if stochastic else None)
    print()
    print(_fmt_table(rows, headers))
    print()
    if not stochastic:
        print(f"{report['bottleneck']} is deterministic: no KL, no posterior to collapse")
    else:
        print(
            f"{report['active_dims']} of {report['latent_dim']} latent dimensions active "
            f"(KL ≥ {threshold}, averaged over the {report['images']} images)"
        )
    if report["inactive"]:
        print(
            f"INACTIVE: {len(report['inactive'])} dimension(s), KL < {threshold}: "
            f"{', '.join(map(str, report['inactive']))} — each carries less than {threshold} "
            "of information about an image (posterior collapse); KL annealing "
            "(bottleneck.kl_schedule) or free bits (bottleneck.free_bits) keep dimensions in "
            "use, see docs/posterior-collapse.md"
        )
    history = report["history"]
    print(
        f"KL, active dimensions and β over {len(history['train']['step'])} logged step(s) and "
        f"{len(history['test']['step'])} evaluation(s) during training: "
        f"{report['files']['kl_over_time']}"
    )
    print(f"KL per dimension: {report['files']['kl_per_dimension']}")
    print(f"all numbers: {report['files']['json']}")
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    from .registry import left_out, plugins

    infos = plugins()
    if args.json:
        print(json.dumps([i.as_dict() for i in infos], indent=2))
        return 0
    rows = []
    for i in infos:
        provides = "; ".join(f"{k}: {', '.join(v)}" for k, v in i.provides.items()) or "-"
        status = i.status if i.status == "ok" else f"{i.status} (see below)"
        rows.append([i.name, i.version or "-", i.distribution or "-", i.source, status, provides])
    print(_fmt_table(rows, ["NAME", "VERSION", "DISTRIBUTION", "SOURCE", "STATUS", "PROVIDES"]))
    failed = [i for i in infos if i.status != "ok"]
    if failed:
        print()
    for i in failed:
        print(f"{i.name}: {i.error}")
    hidden = left_out()
    if hidden:
        print(f"\nleft out by TOK_PLUGINS: {', '.join(hidden)}")
    return 0


def _example_sizes(cls: type) -> list[int] | None:
    try:
        config = cls.example_config() if hasattr(cls, "example_config") else {"dim": 8}
        return [int(k) for k in cls(**config).codebook_sizes]
    except Exception:  # noqa: BLE001 - listing must not fail because of one plugin
        return None


def cmd_quantizers(args: argparse.Namespace) -> int:
    from .registry import allow_list_note, registry

    reg = registry("quantizers")
    entries = reg.entries(args.pattern)
    if not entries:
        raise TokError(
            f"no quantizer matches {args.pattern!r} (registered: {', '.join(reg.names()) or 'none'})"
            + allow_list_note()
        )
    data = [
        {
            "name": e.name,
            "aliases": list(e.aliases),
            "plugin": e.owner,
            "example_codebook_sizes": _example_sizes(e.obj),
            "paper": getattr(e.obj, "paper", ""),
        }
        for e in entries
    ]
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    rows = [
        [
            d["name"],
            ", ".join(d["aliases"]) or "-",
            d["plugin"],
            ", ".join(map(str, d["example_codebook_sizes"] or ["?"])),
            d["paper"] or "-",
        ]
        for d in data
    ]
    print(_fmt_table(rows, ["NAME", "ALIASES", "PLUGIN", "CODEBOOK SIZES (example)", "PAPER"]))
    for name, owners in reg.conflicts().items():
        print(f"conflict: {name!r} is registered by {' and '.join(owners)}")
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    from .recipe import list_recipes

    found = list_recipes(args.pattern)
    if not found:
        names = ", ".join(r.name for r in list_recipes()) or "none"
        raise TokError(f"no shipped recipe matches {args.pattern!r} (shipped: {names})")
    if args.json:
        print(
            json.dumps(
                [{"name": r.name, "purpose": r.purpose, "path": str(r.path)} for r in found],
                indent=2,
            )
        )
        return 0
    print(_fmt_table([[r.name, r.purpose] for r in found], ["NAME", "PURPOSE"]))
    print()
    print("run one with `tok train NAME`; `tok train PATH.toml` runs a recipe file of your own")
    return 0


# parser ------------------------------------------------------------------------


def _device_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device",
        default="cpu",
        help="where the tokenizer runs: cpu (default), cuda, cuda:N or auto",
    )


class _Parser(argparse.ArgumentParser):
    """argparse with tok's error style: a usage error is one line, ``tok: error: …``
    (exit code 2, argparse's code for usage errors). ``commands`` maps each command's
    name to its parser."""

    commands: dict[str, argparse.ArgumentParser]

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"tok: error: {message} (`{self.prog} --help` lists the options)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="tok",
        description="Turn images into discrete tokens (or continuous latents) and back: train tokenizers, encode, decode, inspect.",
        epilog=EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"tok {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    parser.commands = sub.choices  # name → the command's own parser

    p = sub.add_parser(
        "train",
        help="train a tokenizer from a TOML recipe",
        description="Train a tokenizer from a TOML recipe into a run folder (recipe [output] dir).",
    )
    p.add_argument(
        "recipe",
        nargs="?",
        help="a recipe file (recipes/fsq_mnist.toml) or the name of a shipped recipe "
        "(fsq_mnist; `tok recipes` lists them)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="TABLE.KEY=VALUE",
        help="override a recipe value (repeatable), e.g. --set train.steps=200",
    )
    p.add_argument(
        "--resume", metavar="RUN", help="continue the run in folder RUN from its last checkpoint"
    )
    p.add_argument(
        "--nproc",
        type=int,
        metavar="N",
        help="train as N processes on this machine, as `torchrun --standalone "
        "--nproc-per-node=N` would run this command (see README, Scaling out)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "encode",
        help="encode images or videos into token files",
        description="Encode a folder of images or videos, webdataset .tar shards of images or videos, or a dataset split such as mnist:test, into sharded token files plus a manifest (latent files of float latent means for a continuous tokenizer, a VAE). Resumes when run again with the same --out.",
    )
    p.add_argument(
        "src",
        help="a folder of images (PNG, JPEG, BMP, GIF, TIFF, WebP) or .tar shards of them (as "
        "`tok shards` writes); for a video tokenizer a folder of videos (mp4, avi, gif, webm, "
        "mkv, mov) or .tar shards of them; or DATASET:SPLIT (e.g. mnist:test)",
    )
    p.add_argument(
        "--out",
        required=True,
        help="output folder (new, empty, or an unfinished encode of the same source)",
    )
    p.add_argument(
        "--tokenizer",
        "--run",
        dest="tokenizer",
        metavar="RUN",
        help="the tokenizer: a run folder written by `tok train` (default: the complete run "
        "under ./runs with the newest tokenizer for the source's images or videos); --run is "
        "an alias, except under torchrun, which reads it as its own --run-path",
    )
    p.add_argument(
        "--split",
        default="test",
        help="split of a folder with train/ and test/ subfolders (default: test)",
    )
    p.add_argument(
        "--shard-size", type=int, default=1000, help="rows per token file (default: 1000)"
    )
    p.add_argument(
        "--batch-size", type=int, default=256, help="images per forward pass (default: 256)"
    )
    p.add_argument(
        "--resize",
        choices=["error", "resize", "center-crop", "keep"],
        default="error",
        help="images whose size differs from the tokenizer's: fail (default), resize, "
        "resize+center-crop, or keep: encode each image (video: each clip, all its frames) "
        "at its own size, padded to the stride, into ragged token files (tok.tokens/4)",
    )
    p.add_argument(
        "--tile",
        type=int,
        default=0,
        metavar="PX",
        help="images: encode in tiles of PX x PX pixels (a multiple of the stride) for "
        "images too large for memory at once; 0: whole (default)",
    )
    p.add_argument(
        "--overlap",
        type=int,
        default=None,
        metavar="PX",
        help="with --tile: pixels of context around each tile (default: a quarter of --tile)",
    )
    p.add_argument(
        "--window",
        type=int,
        default=0,
        metavar="FRAMES",
        help="videos: encode in temporal windows of FRAMES = 1 + temporal_factor*k frames "
        "(as Cosmos-Tokenizer); 0: whole clip (default)",
    )
    p.add_argument(
        "--fps",
        type=float,
        default=None,
        help="videos: resample to this frame rate by nearest timestamp before taking the "
        "tokenizer's clip length (default: the source's frames as they are)",
    )
    p.add_argument(
        "--limit",
        type=int,
        default=0,
        metavar="N",
        help="encode only the first N items (default: all)",
    )
    _device_option(p)
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        metavar="N",
        help="CPU threads per process (default: torch's; under torchrun 1, as torchrun sets "
        "OMP_NUM_THREADS); the same number gives the same tokens byte for byte",
    )
    p.add_argument(
        "--latent-dtype",
        choices=["float32", "float16", "bfloat16"],
        default=None,
        help="continuous tokenizers: the float dtype the latent files store the latent means "
        "in (default: float32, exactly what the tokenizer computes)",
    )
    p.add_argument(
        "--nproc",
        type=int,
        metavar="N",
        help="encode as N processes on this machine, each writing its own shards: runs this "
        "command as `torchrun --standalone --nproc-per-node=N` would (see README, Scaling out)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser(
        "decode",
        help="decode token files back into images or videos",
        description="Decode a token file or token folder (tokens, or a continuous tokenizer's latents) into PNG images (or, for a video tokenizer, mp4 or GIF videos plus preview.gif), one per row, named by its source key.",
    )
    p.add_argument(
        "tokens", help="a token folder (from tok encode) or one token file, of tokens or latents"
    )
    p.add_argument(
        "--out", required=True, help="output folder for the files (must be new or empty)"
    )
    p.add_argument(
        "--tokenizer",
        "--run",
        dest="tokenizer",
        metavar="RUN",
        help="the tokenizer: a run folder (default: the one recorded in the tokens); "
        "--run is an alias, except under torchrun",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="decode even if the tokens come from a different tokenizer",
    )
    p.add_argument(
        "--batch-size", type=int, default=256, help="rows per forward pass (default: 256)"
    )
    p.add_argument(
        "--video-format",
        choices=["mp4", "gif"],
        default="mp4",
        help="videos: write KEY.mp4 (H.264, default) or KEY.gif; preview.gif is written either way",
    )
    p.add_argument(
        "--fps", type=float, default=8.0, help="videos: frames per second to write (default: 8)"
    )
    p.add_argument(
        "--tile",
        type=int,
        default=0,
        metavar="PX",
        help="images: decode in tiles of PX x PX pixels, overlaps blended (for images too "
        "large to decode at once); 0: whole (default)",
    )
    p.add_argument(
        "--overlap",
        type=int,
        default=None,
        metavar="PX",
        help="with --tile: pixels blended between tiles (default: a quarter of --tile)",
    )
    _device_option(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_decode)

    p = sub.add_parser(
        "shards",
        help="pack a folder of images or videos into webdataset .tar shards",
        description="Pack a folder of images or videos (whichever it holds more of) into "
        "webdataset-layout .tar shards shard-000000.tar, …: each file is one sample holding "
        "its original bytes as KEY.EXT, KEY.json with its path and, for a file in a "
        "subfolder, KEY.cls with that subfolder's name (its class). A folder with train/ and "
        "test/ subfolders is packed into OUT/train/ and OUT/test/. Packing again gives "
        "byte-identical shards; `tok encode` and the imageshards/videoshards datasets read them.",
    )
    p.add_argument("src", help="a folder of images or videos (train/ and test/ subfolders kept)")
    p.add_argument("--out", required=True, help="output folder for the shards (new or empty)")
    p.add_argument(
        "--per-shard",
        type=int,
        default=1000,
        metavar="N",
        help="samples per shard (default: 1000)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_shards)

    p = sub.add_parser(
        "eval",
        help="measure a trained tokenizer",
        description="Print test PSNR, codebook usage, perplexity and bits per pixel of a run, "
        "and a per-stream table: K codes, usage (codes used / K), perplexity, PPL/K, "
        "LOG2-RATIO (log2 perplexity / log2 K) and dead codes (K - used, exact for any K). "
        "Codes are counted sparsely for codebooks above 2^20 codes, so memory follows the "
        "codes seen, not K. Every figure is defined in docs/codebook-health.md. Images also "
        "get SSIM, MS-SSIM, the EfficientNet-Lite Fréchet and feature distances, LPIPS and "
        "rFID where their weights exist (one 'unavailable' line each otherwise), with the "
        "standard deviation over images; docs/metrics.md defines them and the protocol.",
    )
    p.add_argument("run", help="run folder written by `tok train`")
    p.add_argument("--split", default="test", help="dataset split (default: test)")
    p.add_argument(
        "--samples", type=int, default=0, help="use only the first N images (default: all)"
    )
    _device_option(p)
    p.add_argument(
        "--fast",
        action="store_true",
        help="only PSNR and the codebook figures (no SSIM, MS-SSIM, Fréchet distances, "
        "feature distance, LPIPS or rFID)",
    )
    p.add_argument(
        "--features",
        default="lite2",
        choices=["lite0", "lite1", "lite2"],
        help="EfficientNet-Lite of the Fréchet and feature distances (default: lite2, not the "
        "lite0 the perceptual loss trains against)",
    )
    p.add_argument(
        "--lpips-net",
        default="alex",
        choices=["alex", "vgg"],
        help="LPIPS backbone (default: alex)",
    )
    p.add_argument(
        "--lpips-weights",
        metavar="PATH",
        help="torchvision's AlexNet/VGG16 weight file for LPIPS (default: $TOK_LPIPS_WEIGHTS, "
        "else torch hub's checkpoints folder)",
    )
    p.add_argument(
        "--inception-weights",
        metavar="PATH",
        help="torch-fidelity's InceptionV3 weight file for rFID (default: "
        "$TOK_INCEPTION_WEIGHTS, else torch hub's checkpoints folder)",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "inspect",
        help="codebook health of a trained tokenizer (latent dimensions of a VAE)",
        description="Evaluate a run's tokenizer and show its codebook health per stream: usage, "
        "perplexity, its ratios to K and log2 K, dead codes, and the collapse alarm: "
        "USED/MIN(K,N), the codes used over the most that the evaluation's N tokens could "
        "use, COLLAPSED below the threshold (so a codebook larger than the evaluation is "
        "not flagged for its size). Writes health.png (usage histograms; for codebooks above "
        "2^20 codes the ranks of the codes seen only), usage_over_time.png (test usage and "
        "perplexity ratio at each evaluation during training) and health.json into the run "
        "folder, or into --out. Every figure is defined in docs/codebook-health.md. For a "
        "continuous run (a VAE, a [bottleneck] recipe): the KL of each latent dimension "
        "averaged over the images, INACTIVE below the threshold in nats (posterior "
        "collapse); writes health.png (KL per dimension with the threshold), "
        "kl_over_time.png (KL, active dimensions and beta during training) and health.json "
        "(docs/posterior-collapse.md).",
    )
    p.add_argument("run", help="run folder written by `tok train`")
    p.add_argument("--split", default="test", help="dataset split (default: test)")
    p.add_argument(
        "--samples", type=int, default=0, help="use only the first N images (default: all)"
    )
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        metavar="T",
        help="flag streams using fewer than this fraction of the min(K, N) codes their N "
        "tokens could use (default: the run's train.collapse_threshold); for a continuous "
        "run, nats: flag latent dimensions whose KL is below T (default: the run's "
        "train.active_threshold)",
    )
    p.add_argument(
        "--out",
        help="folder for health.png, usage_over_time.png (kl_over_time.png) and health.json "
        "(default: RUN)",
    )
    _device_option(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser(
        "interpolate",
        help="decode a straight walk between two images in a tokenizer's latent space",
        description="Encode images A and B, walk in a straight line between their latents and "
        "decode each step into a strip PNG: original A, the decoded steps, original B. The "
        "latent is the encoder output before quantisation for a discrete tokenizer (each step "
        "is quantised by the run's quantizer before decoding) and the latent mean for a "
        "continuous one (decoded through latent_to_codes).",
    )
    p.add_argument("run", help="run folder written by `tok train`")
    p.add_argument(
        "--from",
        dest="source",
        required=True,
        metavar="A",
        help="the first image: an image file of the tokenizer's size, or DATASET:SPLIT:INDEX "
        "(e.g. mnist:test:3)",
    )
    p.add_argument(
        "--to", dest="target", required=True, metavar="B", help="the second image, as --from"
    )
    p.add_argument(
        "--steps",
        type=int,
        default=10,
        metavar="K",
        help="decoded images, the ends included: t = 0, 1/(K-1), …, 1, where t = 0 and t = 1 "
        "are the reconstructions of A and B; the strip holds K + 2 tiles with the two "
        "originals (default: 10; at least 2)",
    )
    p.add_argument("--out", required=True, help="the strip, a .png file in an existing folder")
    _device_option(p)
    p.set_defaults(func=cmd_interpolate)

    p = sub.add_parser(
        "latent-map",
        help="map a tokenizer's latent space: a labelled scatter and a decoded grid",
        description="Encode the first N images of a split of the run's dataset and draw one "
        "PNG: left, a scatter of their latents coloured by label (when the dataset has labels; "
        "MNIST's digits) — their two numbers for a 2-D latent, else the two directions of "
        "largest variance (PCA; the axes say each one's share of the variance); right, the "
        "images decoded at a G x G grid of points over the 1st-99th percentile of the "
        "scatter on each axis (the other directions at the mean). The latent is the latent "
        "mean for a continuous tokenizer and the encoder output before quantisation for a "
        "discrete one (each point quantised before decoding).",
    )
    p.add_argument("run", help="run folder written by `tok train`")
    p.add_argument("--out", required=True, help="the picture, a .png file in an existing folder")
    p.add_argument("--split", default="test", help="dataset split (default: test)")
    p.add_argument(
        "--samples",
        type=int,
        default=5000,
        metavar="N",
        help="use the first N images of the split (default: 5000; 0: all)",
    )
    p.add_argument(
        "--grid",
        type=int,
        default=15,
        metavar="G",
        help="decode G x G points over the plane (default: 15; 2 to 40)",
    )
    _device_option(p)
    p.set_defaults(func=cmd_latent_map)

    p = sub.add_parser(
        "plugins",
        help="list installed plugins",
        description="List plugins: name, version, distribution, source, status and what each provides.",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_plugins)

    p = sub.add_parser(
        "quantizers",
        help="list registered quantizers",
        description="List registered quantizers, optionally filtered by a glob pattern.",
    )
    p.add_argument("pattern", nargs="?", default="*", help="glob pattern, e.g. 'fsq*'")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_quantizers)

    p = sub.add_parser(
        "recipes",
        help="list the recipes shipped with tok",
        description="List the recipes that ship inside tok (run one with `tok train NAME`), "
        "optionally filtered by a glob pattern.",
    )
    p.add_argument("pattern", nargs="?", default="*", help="glob pattern, e.g. 'seq1d*'")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_recipes)
    for p in sub.choices.values():  # `tok encode … --debug` works as well as `tok --debug encode …`
        p.add_argument(
            "--debug",
            action="store_true",
            default=argparse.SUPPRESS,
            help="show tracebacks of errors",
        )
    return parser


def _one_line_warnings() -> None:
    def show(
        message: Any, category: type, filename: str, lineno: int, file: Any = None, line: Any = None
    ) -> None:
        text = str(message)
        text = text[len("tok: ") :] if text.startswith("tok: ") else text
        print(f"tok: warning: {text}", file=sys.stderr)

    warnings.showwarning = show


#: seconds a rank other than 0 waits before it reports its error and leaves: time for rank
#: 0, failing alike, to say it first (torchrun then stops the others)
_RANK_GRACE = 3.0


def _failed(code: int) -> int:
    """``code``; under torchrun with several processes the process ends here, said and
    flushed, skipping the interpreter's teardown: the process group's C++ threads, torn
    down while the other ranks leave on the same error, can abort the process
    ("terminate called without an active exception", SIGABRT) after the one line."""
    if _env_several():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def main(argv: list[str] | None = None) -> int:
    """Run the ``tok`` command; returns the exit code."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # named by the command's own parser, so its --help is the one suggested
        parser.commands.get(args.command, parser).error(
            f"unrecognized arguments: {' '.join(extra)}"
        )
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    _one_line_warnings()
    try:
        if _env_several() and args.command not in ("train", "encode"):  # each rank would do it all
            raise TokError(
                f"tok {args.command} runs as one process; run it without torchrun (tok train "
                "and tok encode are the commands that split their work over processes)"
            )
        return args.func(args)
    except TokError as exc:
        if args.debug:
            raise
        if _env_rank():  # under torchrun: rank 0 says it when every rank fails alike (the
            time.sleep(_RANK_GRACE)  # others are stopped meanwhile); else this rank does
            print(f"tok: error: process {_env_rank()}: {exc}", file=sys.stderr)
        else:
            print(f"tok: error: {exc}", file=sys.stderr)
        return _failed(exc.exit_code)
    except KeyboardInterrupt:
        if not _env_rank():  # Ctrl-C reaches every rank; one says so
            print("tok: interrupted", file=sys.stderr)
        return _failed(130)
    except BrokenPipeError:  # `tok plugins --json | head`: the reader left; no traceback
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as exc:  # the OS refused a file tok did not wrap: still one line
        if args.debug:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"tok: error: {where}{exc.strerror or exc} (--debug shows where)", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
