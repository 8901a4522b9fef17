"""Benchmark: what tok's own training loop costs, next to a plain PyTorch loop of the same model.

    python bench/overhead.py                                  # recipes/fsq_mnist.toml, 2 rounds
    python bench/overhead.py --threads 1 --repeats 3
    python bench/overhead.py --recipe recipes/video_fsq_movingmnist.toml
    python bench/overhead.py --repeats 0 --step-blocks 8      # the loop body alone
    python bench/overhead.py --concurrent --repeats 2         # side by side, a core each
    python bench/overhead.py --threads 1 --set train.steps=40 \\
        --set train.eval_every=20 --set train.checkpoint_every=20   # a quick check

One recipe (``--recipe``, with ``--set TABLE.KEY=VALUE`` overrides as ``tok train``
takes them), trained two ways in one process, its full ``train.steps`` each:

- **bare**: the loop a user would write by hand, below in :func:`bare` — the same
  tokenizer (``tok.train.build_tokenizer``), the same training split preloaded as one
  uint8 tensor, the same batches (``torch.randint`` on a ``torch.Generator`` seeded
  with ``train.seed``, as tok draws them), the same AdamW, learning rate schedule
  (``tok.train.lr_at``), gradient clipping, autocast precision and loss (the recipe's
  reconstruction loss + the quantizer's ``aux_loss``); no logging, evaluation or
  checkpoints;
- **tok**: ``tok.train.train(recipe, progress=False)`` into a fresh temporary run
  folder, with the recipe's own ``log_every``, ``eval_every`` and ``checkpoint_every``.

Both start from ``torch.manual_seed(train.seed)``, so they do the same arithmetic:
the script checks that the final weights are the same (tok's ``model.safetensors``
against the bare model). The rounds alternate the order (bare, tok, then tok, bare,
…) so that drift of the machine's load hits both sides alike.

Data loading and model building (``tok.train.build_parts`` inside ``train``) are
timed apart and left out: **training time** is the rest, and the overhead is
``(tok − bare) / bare`` of it — everything tok adds: run folder and lock, recipe
files, the per-step checks (``isfinite`` of the loss), metric rows, evaluations and
their pictures, checkpoints, the final loss plot. The breakdown times tok's calls
of those functions by wrapping them (``unittest.mock.patch``; the wrappers cost
microseconds per call, and tok's code is not changed); what is left is the cost of
the steps themselves plus noise. Target: an overhead of at most 5 %.

``--concurrent`` runs the two sides at the same time instead, in two processes of
one thread each, each pinned to a core of its own (``os.sched_setaffinity``), the
cores swapped from one round to the next: a machine whose speed drifts over minutes
(a shared VM) then slows both sides alike, and what is left between them is tok's
cost and the difference of the two cores, which the swap cancels.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from unittest import mock

import torch
from _common import cpu_model
from safetensors.torch import load_file

import tok.evaluation as tok_evaluation
import tok.train as tok_train
from tok.components import Facts, build
from tok.device import autocast, resolve_device, resolve_precision
from tok.distributed import mean_over_ranks, my_share
from tok.losses import LossInputs
from tok.models import Tokenizer
from tok.recipe import Recipe, load_recipe
from tok.run import MetricsLog, Run

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "fsq_mnist.toml"
QUOTA = 5.0  # per cent of the training time


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# the bare loop ---------------------------------------------------------------------


def bare(recipe: Recipe) -> tuple[float, float, dict[str, torch.Tensor]]:
    """Train ``recipe``'s tokenizer with a hand-written loop.

    Returns the seconds of data loading + building, the seconds of training,
    and the final weights.
    """
    t = recipe.train
    if t.threads:
        torch.set_num_threads(t.threads)
    device = resolve_device(t.device)
    bf16 = resolve_precision(t.precision, device) == "bf16"
    torch.manual_seed(t.seed)

    start = time.perf_counter()
    dataset = build("datasets", recipe.data.name, recipe.data.options)
    images = dataset.load("train").images.to(device)  # uint8 (n, c, ...)
    model = tok_train.build_tokenizer(recipe, tuple(images.shape[1:])).to(device)
    optimizer = torch.optim.AdamW(  # fused, as tok.train.build_parts makes it
        model.parameters(),
        lr=t.lr,
        betas=tuple(t.betas),
        weight_decay=t.weight_decay,
        fused=device.type in ("cpu", "cuda"),
    )
    generator = torch.Generator().manual_seed(t.seed)
    extra = None  # another reconstruction loss, or [losses.NAME] tables: through the registry
    if t.loss not in ("mse", "l1") or recipe.losses:
        facts = Facts(input_shape=tuple(images.shape[1:]))
        extra = {t.loss: build("losses", t.loss, {}, facts)}
        extra |= {c.name: build("losses", c.name, c.options, facts) for c in recipe.losses}
        extra = {name: loss.to(device) for name, loss in extra.items()}
    sync(device)
    loaded = time.perf_counter()

    model.train()
    n = len(images)
    for step in range(t.steps):
        for group in optimizer.param_groups:
            group["lr"] = tok_train.lr_at(step, recipe)
        idx = torch.randint(0, n, (t.batch_size,), generator=generator)
        x = images[idx.to(device)].float().div_(255)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = model(x)
            recon = out.reconstruction.float()
            if extra is None:
                diff = recon - x
                loss = diff.pow(2).mean() if t.loss == "mse" else diff.abs().mean()
            else:
                batch = LossInputs(x, recon, model, step)
                loss = sum(f(batch).loss for f in extra.values())
        loss = loss + out.aux_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if t.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        optimizer.step()
        if extra is not None:
            detached = LossInputs(x, recon.detach(), model, step)
            for f in extra.values():
                f.update(detached)
    sync(device)
    done = time.perf_counter()
    weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return loaded - start, done - loaded, weights


# tok's loop, with its parts timed ----------------------------------------------------

#: what the breakdown times: (label, object, attribute); indented labels are part of
#: the one above them
TIMED: list[tuple[str, object, str]] = [
    ("data + build (`build_parts`)", tok_train, "build_parts"),
    ("evaluation + pictures (`evaluate_and_show`)", tok_train, "evaluate_and_show"),
    ("  evaluate (`eval_samples` forward passes)", tok_evaluation, "evaluate"),
    ("  recon picture (`Run.save_samples`)", Run, "save_samples"),
    ("  usage histogram (`Run.save_usage`)", Run, "save_usage"),
    ("  collapse check (`warn_collapse`)", tok_evaluation, "warn_collapse"),
    ("checkpoints (`Run.save_checkpoint`)", Run, "save_checkpoint"),
    ("  tokenizer files (`Tokenizer.save`)", Tokenizer, "save"),
    ("recipe.toml (`Run.write_recipe`)", Run, "write_recipe"),
    ("non-finite weight checks (`nonfinite_tensors`)", tok_train, "nonfinite_tensors"),
    ("log rows: stream stats (`batch_stream_stats`)", tok_train, "batch_stream_stats"),
    ("log rows: JSON lines (`MetricsLog.write`)", MetricsLog, "write"),
    ("loss plot at the end (`Run.save_curves`)", Run, "save_curves"),
]
BUILD = TIMED[0][0]


@contextlib.contextmanager
def timed_calls(device: torch.device) -> Iterator[dict[str, list[float]]]:
    """Wrap the functions of :data:`TIMED`; yields label → seconds of each call."""
    seconds: dict[str, list[float]] = defaultdict(list)

    def wrap(label: str, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            sync(device)
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                sync(device)
                seconds[label].append(time.perf_counter() - start)

        return timed

    with contextlib.ExitStack() as stack:
        for label, owner, name in TIMED:
            original = owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)
            stack.enter_context(mock.patch.object(owner, name, wrap(label, original)))
        yield seconds


def with_tok(recipe_path: str, overrides: list[str], device: torch.device) -> dict:
    """Train with ``tok.train.train`` into a temporary folder; seconds, parts and weights."""
    with tempfile.TemporaryDirectory(prefix="tok-overhead-") as tmp:
        run_dir = Path(tmp) / "run"
        recipe = load_recipe(recipe_path, [*overrides, f"output.dir={json.dumps(str(run_dir))}"])
        with timed_calls(device) as seconds:
            sync(device)
            start = time.perf_counter()
            tok_train.train(recipe, progress=False)
            sync(device)
            total = time.perf_counter() - start
        weights = load_file(run_dir / Run.WEIGHTS)
        rows = Run(run_dir).log_rows()
    build_s = sum(seconds[BUILD])
    return {
        "build": build_s,
        "train": total - build_s,
        "parts": {label: (len(v), sum(v)) for label, v in seconds.items()},
        "weights": weights,
        "rows": len(rows),
    }


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """The largest absolute difference between two state dicts (inf if they differ in keys)."""
    if a.keys() != b.keys():
        return float("inf")
    worst = 0.0
    for k in a:
        if a[k].is_floating_point():
            worst = max(worst, (a[k].float() - b[k].float()).abs().max().item())
        elif not torch.equal(a[k], b[k]):
            return float("inf")
    return worst


# the loop body alone, in interleaved blocks -----------------------------------------


def step_blocks(recipe: Recipe, steps: int, pairs: int) -> list[tuple[float, float]]:
    """ms per step of the bare loop body and of tok's, in ``pairs`` interleaved blocks of
    ``steps`` steps on one model (what the long rounds cannot show through the machine's
    drift). tok's body mirrors ``tok.train._train``'s: this rank's share of the batch, the
    loss through the registry, ``mean_over_ranks`` and the finiteness check, the losses'
    ``update``; nothing is logged, evaluated or saved."""
    t = recipe.train
    device = resolve_device(t.device)
    precision = resolve_precision(t.precision, device)
    parts = tok_train.build_parts(recipe, device)
    model, opt = parts.tokenizer, parts.optimizer
    images = (
        build("datasets", recipe.data.name, recipe.data.options).load("train").images.to(device)
    )
    g = torch.Generator().manual_seed(t.seed)

    def one(step: int, through_tok: bool) -> None:
        for group in opt.param_groups:
            group["lr"] = tok_train.lr_at(step, recipe)
        idx = torch.randint(0, len(images), (t.batch_size,), generator=g)
        if through_tok:
            x = images[my_share(idx).to(device)].float().div_(255)
            with autocast(precision, device):
                out = model(x)
                batch = LossInputs(x, out.reconstruction.float(), model, step)
                terms = {name: loss(batch) for name, loss in parts.losses.items()}
            loss = sum(term.loss for term in terms.values()) + out.aux_loss
            if not torch.isfinite(mean_over_ranks(loss)):
                raise SystemExit("non-finite loss")
        else:
            x = images[idx.to(device)].float().div_(255)
            with autocast(precision, device):
                out = model(x)
                diff = out.reconstruction.float() - x
                loss = (diff.pow(2).mean() if t.loss == "mse" else diff.abs().mean()) + out.aux_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if t.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        opt.step()
        if through_tok:
            detached = LossInputs(x, batch.reconstruction.detach(), model, step)
            _ = {name: loss_fn.update(detached) for name, loss_fn in parts.losses.items()}

    def block(through_tok: bool, start: int) -> float:
        sync(device)
        t0 = time.perf_counter()
        for i in range(steps):
            one(start + i, through_tok)
        sync(device)
        return (time.perf_counter() - t0) / steps * 1000

    model.train()
    block(False, 0), block(True, 0)  # warm-up
    results = []
    for r in range(pairs):
        first = r % 2 == 0  # alternate which side goes first
        a = block(not first, r * 2 * steps)
        b = block(first, (r * 2 + 1) * steps)
        results.append((a, b) if first else (b, a))  # (bare, tok)
    return results


# side by side -----------------------------------------------------------------------


def run_side(name: str, recipe: Recipe, recipe_path: str, overrides: list[str], out: Path) -> None:
    """Run one side (``bare`` or ``tok``) and write its result to ``out`` (JSON) and its
    final weights beside it (safetensors): the child process of ``--concurrent``."""
    from safetensors.torch import save_file

    device = resolve_device(recipe.train.device)
    if name == "bare":
        build_s, train_s, weights = bare(recipe)
        result = {"build": build_s, "train": train_s}
    else:
        result = with_tok(recipe_path, overrides, device)
        weights = result.pop("weights")
    save_file({k: v.contiguous() for k, v in weights.items()}, out.with_suffix(".safetensors"))
    out.write_text(json.dumps(result))


def concurrent(args: argparse.Namespace, r: int) -> dict:
    """Round ``r`` of ``--concurrent``: bare and tok at once, one core each (swapped on odd
    rounds); the two results as the sequential rounds give them."""
    cores = sorted(os.sched_getaffinity(0))[:2]
    if len(cores) < 2:
        sys.exit("--concurrent needs two cores")
    cores = cores if r % 2 == 0 else cores[::-1]
    procs, result = {}, {}
    with tempfile.TemporaryDirectory(prefix="tok-overhead-") as tmp:
        for name, core in zip(("bare", "tok"), cores, strict=True):
            cmd = [sys.executable, __file__, "--recipe", args.recipe, "--side", name]
            cmd += ["--result", str(Path(tmp) / f"{name}.json"), "--threads", "1"]
            cmd += [a for item in args.set for a in ("--set", item)]
            procs[name] = subprocess.Popen(
                cmd, preexec_fn=functools.partial(os.sched_setaffinity, 0, {core})
            )
        for name, proc in procs.items():
            if proc.wait():
                sys.exit(f"the {name} side failed")
            result[name] = json.loads((Path(tmp) / f"{name}.json").read_text())
            result[name]["weights"] = load_file(Path(tmp) / f"{name}.safetensors")
            if name == "tok":
                result[name]["parts"] = {k: tuple(v) for k, v in result[name]["parts"].items()}
    result["order"] = (f"bare on cpu{cores[0]}", f"tok on cpu{cores[1]}")
    return result


# the report --------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default=str(RECIPE), help="recipe file (default fsq_mnist)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="TABLE.KEY=VALUE",
        help="override a recipe value (repeatable), as `tok train --set`",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads, both sides (sets train.threads; default: the recipe's)",
    )
    parser.add_argument("--repeats", type=int, default=2, help="rounds of bare + tok (default 2)")
    parser.add_argument(
        "--step-blocks",
        type=int,
        default=0,
        metavar="PAIRS",
        help="also time the loop body alone: PAIRS interleaved blocks of 150 steps, bare and "
        "tok's (0: not)",
    )
    parser.add_argument(
        "--concurrent",
        action="store_true",
        help="run bare and tok at the same time, one thread on a core each (see above)",
    )
    parser.add_argument("--side", choices=["bare", "tok"], help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    # a short check run's codebooks look collapsed; the warning is not what is measured
    warnings.filterwarnings("ignore", category=tok_train.CollapseWarning)
    overrides = list(args.set)
    if args.threads is not None:
        overrides.append(f"train.threads={args.threads}")
    recipe = load_recipe(args.recipe, overrides)
    t = recipe.train
    device = resolve_device(t.device)
    precision = resolve_precision(t.precision, device)
    if t.threads:
        torch.set_num_threads(t.threads)

    if args.side:  # a child of --concurrent
        run_side(args.side, recipe, args.recipe, overrides, args.result)
        return

    rounds = []
    for r in range(args.repeats if args.concurrent else 0):
        result = concurrent(args, r)
        result["diff"] = max_difference(result["bare"]["weights"], result["tok"]["weights"])
        print(
            f"round {r + 1} side by side: bare {result['bare']['train']:.2f} s, tok "
            f"{result['tok']['train']:.2f} s training",
            file=sys.stderr,
            flush=True,
        )
        rounds.append(result)
    for r in range(0 if args.concurrent else args.repeats):
        order = ("bare", "tok") if r % 2 == 0 else ("tok", "bare")
        result = {}
        for side in order:
            if side == "bare":
                build_s, train_s, weights = bare(recipe)
                result["bare"] = {"build": build_s, "train": train_s, "weights": weights}
            else:
                result["tok"] = with_tok(args.recipe, overrides, device)
            print(
                f"round {r + 1} {side}: {result[side]['train']:.2f} s training",
                file=sys.stderr,
                flush=True,
            )
        result["order"] = order
        result["diff"] = max_difference(result["bare"]["weights"], result["tok"]["weights"])
        rounds.append(result)

    if rounds:
        where = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
        print(
            f"device: {device} ({where}); torch {torch.__version__}; threads "
            f"{1 if args.concurrent else torch.get_num_threads()}; precision {precision}; recipe {args.recipe}"
            + (f" --set {' --set '.join(args.set)}" if args.set else "")
        )
        print(
            f"steps {t.steps}, batch {t.batch_size}, log_every {t.log_every}, eval_every "
            f"{t.eval_every} ({t.eval_samples} test items), checkpoint_every "
            f"{t.checkpoint_every}; {args.repeats} round(s), "
            + ("side by side, one thread on a core each, cores swapped" if args.concurrent
               else "order alternating")
        )  # fmt: skip
        print()
        print(
            "| round | order | bare load+build s | tok load+build s | bare training s | "
            "tok training s | ratio tok/bare | overhead | final weights |"
        )
        print("|---:|---|---:|---:|---:|---:|---:|---:|---|")
        overheads = []
        for i, res in enumerate(rounds, 1):
            b, k = res["bare"], res["tok"]
            over = (k["train"] - b["train"]) / b["train"] * 100
            overheads.append(over)
            same = "identical" if res["diff"] == 0 else f"max abs diff {res['diff']:.2g}"
            print(
                f"| {i} | {' → '.join(res['order'])} | {b['build']:.2f} | {k['build']:.2f} | "
                f"{b['train']:.2f} | {k['train']:.2f} | {k['train'] / b['train']:.3f} | "
                f"{over:+.1f} % | {same} |"
            )
        median = statistics.median(overheads)
        verdict = "within" if median <= QUOTA else "OVER"
        print()
        print(
            f"median overhead: {median:+.1f} % of the training time ({verdict} the {QUOTA:g} % quota)"
        )

        # where tok's time goes
        bare_median = statistics.median(res["bare"]["train"] for res in rounds)
        print()
        heads = " | ".join(f"round {i} s" for i in range(1, len(rounds) + 1))
        print(f"| tok's part | calls per run | {heads} | median, % of bare training |")
        print("|---|---:|" + "---:|" * len(rounds) + "---:|")
        measured = [0.0] * len(rounds)
        for label, _, _ in TIMED[1:]:
            values = [res["tok"]["parts"].get(label, (0, 0.0)) for res in rounds]
            secs = [s for _, s in values]
            if not label.startswith(" "):
                measured = [m + s for m, s in zip(measured, secs, strict=True)]
            name = label.replace("  ", "&nbsp;&nbsp;↳ ", 1) if label.startswith(" ") else label
            print(
                f"| {name} | {values[0][0]} | "
                + " | ".join(f"{s:.3f}" for s in secs)
                + f" | {statistics.median(secs) / bare_median * 100:.2f} % |"
            )
        rest = [
            res["tok"]["train"] - res["bare"]["train"] - m
            for res, m in zip(rounds, measured, strict=True)
        ]
        print(
            "| the rest: run folder, lock, per-step checks and noise (tok − bare − the above) | | "
            + " | ".join(f"{s:+.3f}" for s in rest)
            + f" | {statistics.median(rest) / bare_median * 100:+.2f} % |"
        )
        print()
        print(
            f"metrics.jsonl rows per run: {rounds[0]['tok']['rows']}; times are wall seconds "
            "inside tok's training time (data loading excluded); the first tok round also pays "
            "one-time costs of the process (matplotlib's import at the first picture)."
        )
    if args.step_blocks:
        pairs = step_blocks(recipe, 150, args.step_blocks)
        where = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
        print(
            f"\nthe loop body alone: {device} ({where}); threads {torch.get_num_threads()}; "
            f"precision {precision}; batch {t.batch_size}; {len(pairs)} pairs of 150-step blocks"
        )
        print("| pair | order | bare ms/step | tok ms/step | tok/bare |")
        print("|---:|---|---:|---:|---:|")
        for i, (b, k) in enumerate(pairs, 1):
            order = "bare → tok" if i % 2 == 1 else "tok → bare"
            print(f"| {i} | {order} | {b:.2f} | {k:.2f} | {k / b:.3f} |")
        ratio = statistics.median(k / b for b, k in pairs)
        print(f"\nmedian tok/bare of the loop body, blocks of 150 steps: {ratio:.3f}")


if __name__ == "__main__":
    main()
