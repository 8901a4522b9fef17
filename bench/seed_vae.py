"""Benchmark (issue 14): the lecture's PyTorch VAE loop against tok's training of the same
model, interleaved epoch by epoch in one process.

    python bench/seed_vae.py                 # 10 epochs each, fp32
    python bench/seed_vae.py --epochs 3 --precision bf16

The loop the lecture calls slow, written from its description:
``torchvision.datasets.MNIST`` with ``transforms.ToTensor()`` through a
``DataLoader(batch_size=128, shuffle=True)``; an MLP VAE 784-400-20 (ReLU, two heads
for μ and log σ², decoder 20-400-784 with a sigmoid); ``optim.Adam(lr=1e-3)``; loss =
binary cross-entropy summed over the pixels + the analytic KL, one optimiser step per
batch (469 per epoch).

tok's side is ``tok train recipes/vae_mnist.toml`` through :func:`tok.train.train`, one
epoch (469 steps) per call, resumed from its checkpoint for the next: its epoch times
are the run's own clock (``metrics.jsonl``), which leaves out the checkpoint written
between epochs; evaluation runs only after the last epoch. Epoch e of the lecture's loop
runs, then epoch e of tok's, so that a machine slowing down or speeding up during the
run weighs on both sides alike.

Also timed, for where the time goes: the same model in a plain loop on preloaded
tensors (no DataLoader), the matrix multiplications of tok's step alone (each Linear's
forward, input-gradient and weight-gradient products at batch 128, replayed 469 times),
and a profile of tok's step by operator. Prints s/epoch (median over epochs 2..E; the
first includes warm-up), the ratio, and each side's final test loss (negative ELBO,
nats per test image, all 10,000 test digits).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from _common import cpu_model  # noqa: E402


class LectureVAE(nn.Module):
    """784-400-20 MLP VAE: ReLU hidden layers, μ and log σ² heads, sigmoid output."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(784, 400)
        self.mu = nn.Linear(400, 20)
        self.logvar = nn.Linear(400, 20)
        self.fc3 = nn.Linear(20, 400)
        self.fc4 = nn.Linear(400, 784)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = F.relu(self.fc1(x.view(-1, 784)))
        mu, logvar = self.mu(h), self.logvar(h)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        return torch.sigmoid(self.fc4(F.relu(self.fc3(z)))), mu, logvar


def loss_fn(recon, x, mu, logvar) -> torch.Tensor:
    """Negative ELBO of the batch, summed: BCE over pixels + KL to N(0, I)."""
    bce = F.binary_cross_entropy(recon, x.view(-1, 784), reduction="sum")
    return bce - 0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())


def lecture_setup(root: str, model: nn.Module):
    """The lecture's DataLoader and optimizer for ``model``."""
    from torchvision import datasets, transforms

    train = datasets.MNIST(root, train=True, download=False, transform=transforms.ToTensor())
    loader = torch.utils.data.DataLoader(train, batch_size=128, shuffle=True)
    return model, loader, torch.optim.Adam(model.parameters(), lr=1e-3)


def lecture_step(model: nn.Module, opt, x: torch.Tensor) -> None:
    """One optimiser step the lecture's way on the batch ``x``."""
    recon, mu, logvar = model(x)
    loss = loss_fn(recon, x, mu, logvar)
    opt.zero_grad()
    loss.backward()
    opt.step()


def lecture_epoch(model: nn.Module, loader, opt) -> float:
    """One epoch the lecture's way (469 batches); its seconds."""
    model.train()
    start = time.perf_counter()
    for x, _ in loader:
        lecture_step(model, opt, x)
    return time.perf_counter() - start


def lecture_test_loss(root: str, model: nn.Module) -> float:
    """The lecture's test loss: negative ELBO summed over the test split, per image."""
    from torchvision import datasets, transforms

    test = datasets.MNIST(root, train=False, download=False, transform=transforms.ToTensor())
    model.eval()
    total = 0.0
    with torch.no_grad():
        for x, _ in torch.utils.data.DataLoader(test, batch_size=1000):
            recon, mu, logvar = model(x)
            total += loss_fn(recon, x, mu, logvar).item()
    return total / len(test)


def preloaded_epoch(root: str) -> float:
    """Seconds for 469 steps of the lecture's model and loss on preloaded float tensors,
    batches drawn by a permutation (no DataLoader, no ToTensor)."""
    from torchvision import datasets

    train = datasets.MNIST(root, train=True, download=False)
    images = train.data.float().div(255).unsqueeze(1)
    model = LectureVAE()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    order = torch.randperm(len(images))
    start = time.perf_counter()
    for i in range(469):
        lecture_step(model, opt, images[order[i * 128 : (i + 1) * 128]])
    return time.perf_counter() - start


def matmul_epoch(tokenizer: torch.nn.Module, batch: int = 128, steps: int = 469) -> float:
    """Seconds for the matrix products of ``steps`` training steps of ``tokenizer`` alone:
    every ``nn.Linear`` (tok's ``Projection`` too) at ``batch`` rows — the forward product,
    the input gradient (all but the first layer, whose input needs none) and the weight
    gradient — on random float32 operands."""
    linears = [m for m in tokenizer.modules() if isinstance(m, torch.nn.Linear)]
    ops = []
    for n, layer in enumerate(linears):
        out_f, in_f = layer.weight.shape
        x, w, g = torch.randn(batch, in_f), torch.randn(out_f, in_f), torch.randn(batch, out_f)
        bias = torch.randn(out_f)
        ops.append(lambda x=x, w=w, b=bias: torch.addmm(b, x, w.t()))
        if n:
            ops.append(lambda g=g, w=w: g @ w)
        ops.append(lambda g=g, x=x: g.t() @ x)
    for op in ops * 20:
        op()
    start = time.perf_counter()
    for _ in range(steps):
        for op in ops:
            op()
    return time.perf_counter() - start


def tok_run(folder: Path, precision: str, epochs: int):
    """tok's training of recipes/vae_mnist.toml, one epoch per call (a generator of the
    :class:`tok.train.RunResult` after each epoch)."""
    from tok.recipe import load_recipe
    from tok.train import train

    recipe = load_recipe(
        Path(__file__).parents[1] / "recipes" / "vae_mnist.toml",
        overrides=[
            f"train.steps={469 * epochs}",
            f"train.eval_every={469 * epochs}",
            f"train.checkpoint_every={469 * epochs}",
            f"train.precision={precision!r}".replace("'", '"'),
            f"output.dir={str(folder)!r}".replace("'", '"'),
        ],
    )
    for e in range(epochs):
        yield train(recipe, resume=e > 0, stop_after=469, progress=False)


def epoch_times(folder: Path) -> list[float]:
    """tok's seconds per epoch from the run's ``metrics.jsonl`` (rows every 469 steps)."""
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    times = [0.0] + [r["time"] for r in rows if r["split"] == "train" and r["step"] % 469 == 0]
    return [b - a for a, b in zip(times[:-1], times[1:], strict=True)]


def profile_steps(folder: Path, steps: int = 60) -> list[tuple[str, float]]:
    """Where a step of tok's training goes: CPU self time by operator group over ``steps``
    steps of the finished run's model (resumed), as fractions of the wall time."""
    from torch.profiler import ProfilerActivity, profile

    from tok.losses import LossInputs
    from tok.recipe import load_recipe
    from tok.train import build_parts

    recipe = load_recipe(folder / "recipe.toml")
    parts = build_parts(recipe, torch.device("cpu"))
    tokenizer, opt, nll = parts.tokenizer.train(), parts.optimizer, parts.losses[recipe.train.loss]
    batches = parts.batches(0)

    def step() -> None:
        x = next(batches).float().div_(255)
        out = tokenizer(x)
        loss = nll(LossInputs(x, out.reconstruction, tokenizer, 0)).loss + out.aux_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(20):
        step()
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    wall = (time.perf_counter() - start) * 1e6
    groups = {"matrix products (mm, addmm)": 0.0, "optimizer (fused AdamW)": 0.0}
    other = 0.0
    for e in prof.key_averages():
        if e.key in ("aten::mm", "aten::addmm"):
            groups["matrix products (mm, addmm)"] += e.self_cpu_time_total
        elif e.key in ("aten::_fused_adamw_",):
            groups["optimizer (fused AdamW)"] += e.self_cpu_time_total
        elif e.key.startswith("aten::"):
            other += e.self_cpu_time_total
    groups["other operators (elementwise, reductions, copies)"] = other
    groups["Python, autograd and dispatch (the rest)"] = max(0.0, wall - sum(groups.values()))
    return [(k, v / wall) for k, v in groups.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    args = parser.parse_args()
    root = os.environ.get("TOK_DATA_DIR", "data")
    threads = torch.get_num_threads()
    print(f"device: cpu ({cpu_model()}); torch {torch.__version__}; threads {threads}")
    lecture: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "vae_mnist"
        run = tok_run(folder, args.precision, args.epochs)
        model = LectureVAE()
        lecture_state = lecture_setup(root, model)
        result = None
        for _ in range(args.epochs):
            lecture.append(lecture_epoch(*lecture_state))
            result = next(run)
            torch.set_num_threads(threads)  # tok's run may set its own; both sides alike
        tok_times = epoch_times(folder)
        lecture_loss = lecture_test_loss(root, model)
        tok_loss = result.eval["neg_elbo"]
        preloaded = statistics.median(preloaded_epoch(root) for _ in range(3))
        from tok.models import Tokenizer

        matmuls = statistics.median(matmul_epoch(Tokenizer.load(folder)) for _ in range(3))
        profile = profile_steps(folder)
    med = {
        "lecture": statistics.median(lecture[1:] or lecture),
        "tok": statistics.median(tok_times[1:] or tok_times),
    }
    print("lecture loop, s/epoch: " + ", ".join(f"{s:.2f}" for s in lecture))
    print(f"tok ({args.precision}), s/epoch: " + ", ".join(f"{s:.2f}" for s in tok_times))
    print(
        f"median s/epoch (epochs 2..{args.epochs}): lecture {med['lecture']:.2f}, tok {med['tok']:.2f}"
    )
    print(f"tok is {med['lecture'] / med['tok']:.2f}x faster per epoch")
    print(
        f"final test loss (-ELBO, nats per image): lecture {lecture_loss:.2f}, tok {tok_loss:.2f}"
    )
    print(f"same model, plain loop on preloaded tensors: {preloaded:.2f} s/epoch")
    print(
        f"tok's matrix products alone: {matmuls:.2f} s/epoch; tok's epoch is "
        f"{med['tok'] / matmuls:.2f}x that"
    )
    print("where tok's step goes (profile of 60 steps, share of wall time):")
    for name, share in profile:
        print(f"  {name:50s} {share:6.1%}")


if __name__ == "__main__":
    main()
