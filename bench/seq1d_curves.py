"""PSNR-versus-step curves of ``seq1d`` runs, and the step at which each leaves the plateau.

    python bench/seq1d_curves.py RUN [RUN ...] [--out bench/seq1d_curves.png] [--table]

Each RUN is a run folder of ``tok train`` (its ``metrics.jsonl`` is read); the
label is the folder's name. Prints one line per run (last test PSNR, the step
leaving the start-up plateau) and draws two panels against the step: PSNR
(of the training batches, and of the test digits at each evaluation) with
the PSNR of drawing the mean digit for reference, and the batch's codebook
usage. ``--table`` also prints the test PSNR of every evaluation as a
markdown table, one column per run.

"Leaving the plateau" is the first logged training step whose batch uses at
least 10 % of the codebook and whose loss is below 90 % of the mean-digit loss
(0.0673 on MNIST's training split: the MSE of predicting every digit by the
average digit, which is what the decoder draws while the tokens carry nothing).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

MEAN_DIGIT_LOSS = 0.0673  # MSE of the mean training digit against the training digits
COLORS = {"K16": "tab:blue", "K32": "tab:orange", "K64": "tab:green"}


def read_rows(run: Path) -> tuple[list[dict], list[dict]]:
    """``(train rows, test rows)`` of a run folder's ``metrics.jsonl``."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line]
    return [r for r in rows if r["split"] == "train"], [r for r in rows if r["split"] != "train"]


def smooth(values: list[float], n: int = 5) -> list[float]:
    """Trailing mean of the last ``n`` values (fewer at the start)."""
    return [
        sum(values[max(0, i - n + 1) : i + 1]) / (i + 1 - max(0, i - n + 1))
        for i in range(len(values))
    ]


def plateau_exit(train: list[dict]) -> int | None:
    """The first logged step that uses ≥ 10 % of the codes and beats the mean digit by 10 %."""
    for r in train:
        if r.get("usage", 0) >= 0.1 and r["loss"] < 0.9 * MEAN_DIGIT_LOSS:
            return r["step"]
    return None


def print_table(runs: list[Path]) -> None:
    """Test PSNR (dB) at every evaluated step, one column per run, as a markdown table."""
    psnr = {run.name: {r["step"]: r["psnr"] for r in read_rows(run)[1]} for run in runs}
    steps = sorted({step for by_step in psnr.values() for step in by_step})
    print("| step | " + " | ".join(psnr) + " |")
    print("|---:|" + "---:|" * len(psnr))
    for step in steps:
        cells = [f"{by_step[step]:.2f}" if step in by_step else "—" for by_step in psnr.values()]
        print(f"| {step} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("seq1d_curves.png"))
    parser.add_argument("--table", action="store_true", help="print test PSNR per step (markdown)")
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_psnr, ax_usage) = plt.subplots(1, 2, figsize=(13, 5))
    for run in args.runs:
        train, test = read_rows(run)
        exit_step = plateau_exit(train)
        end = test[-1] if test else {}
        print(
            f"{run.name:28s} end step {train[-1]['step'] if train else '-':>5} "
            f"test PSNR {end.get('psnr', float('nan')):6.2f} dB  usage {end.get('usage', 0):.3f}  "
            f"leaves the plateau at step {exit_step}"
        )
        # folders named like K32_t1_s0: colour by K, dashed for 1 thread, dotted for seed 1
        parts = run.name.split("_")
        style = ":" if "s1" in parts else "--" if "t1" in parts else "-"
        color = COLORS.get(parts[0])
        steps = [r["step"] for r in train]
        batch_psnr = smooth([10 * math.log10(1 / r["loss"]) for r in train])
        (line,) = ax_psnr.plot(steps, batch_psnr, style, color=color, linewidth=1, label=run.name)
        ax_psnr.plot(
            [r["step"] for r in test],
            [r["psnr"] for r in test],
            "o",
            color=line.get_color(),
            markersize=5,
        )
        ax_usage.plot(
            steps,
            smooth([100 * r.get("usage", 0) for r in train]),
            style,
            color=line.get_color(),
            linewidth=1,
            label=run.name,
        )
    ax_psnr.axhline(
        10 * math.log10(1 / MEAN_DIGIT_LOSS), color="gray", linestyle=":", label="mean digit"
    )
    ax_psnr.set(
        xlabel="step",
        ylabel="PSNR (dB)",
        title="PSNR: training batches (lines, mean of 5 logs), test digits (dots)",
    )
    ax_usage.axhline(10, color="gray", linestyle=":", label="10 % of the codes")
    ax_usage.set(xlabel="step", ylabel="codes used by the batch (%)", title="batch codebook usage")
    for ax in (ax_psnr, ax_usage):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if args.table:
        print_table(args.runs)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
