"""Benchmark (issue 14, first half): the lecture's PyTorch VAE loop, timed per epoch.

    python bench/seed_vae.py --epochs 3

The loop the lecture calls slow, written from its description:
``torchvision.datasets.MNIST`` with ``transforms.ToTensor()`` through a
``DataLoader(batch_size=128, shuffle=True)``; an MLP VAE 784-400-20 (ReLU, two heads
for μ and log σ², decoder 20-400-784 with a sigmoid); ``optim.Adam(lr=1e-3)``; loss =
binary cross-entropy summed over the pixels + the analytic KL, one optimiser step per
batch (469 per epoch). Prints seconds per epoch and the final test loss (nats per
image). tok's side (``recipes/vae_mnist.toml``, interleaved with this loop in one
process) comes with the Gaussian bottleneck.
"""

from __future__ import annotations

import argparse
import os
import sys
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


def lecture_epochs(root: str, epochs: int) -> tuple[list[float], float]:
    """Train the lecture's way; seconds of each epoch and the final test loss per image."""
    from torchvision import datasets, transforms

    train = datasets.MNIST(root, train=True, download=False, transform=transforms.ToTensor())
    test = datasets.MNIST(root, train=False, download=False, transform=transforms.ToTensor())
    loader = torch.utils.data.DataLoader(train, batch_size=128, shuffle=True)
    model = LectureVAE()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    seconds = []
    for _ in range(epochs):
        model.train()
        start = time.perf_counter()
        for x, _ in loader:
            recon, mu, logvar = model(x)
            loss = loss_fn(recon, x, mu, logvar)
            opt.zero_grad()
            loss.backward()
            opt.step()
        seconds.append(time.perf_counter() - start)
    model.eval()
    total = 0.0
    with torch.no_grad():
        for x, _ in torch.utils.data.DataLoader(test, batch_size=1000):
            recon, mu, logvar = model(x)
            total += loss_fn(recon, x, mu, logvar).item()
    return seconds, total / len(test)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    root = os.environ.get("TOK_DATA_DIR", "data")
    print(
        f"device: cpu ({cpu_model()}); torch {torch.__version__}; threads {torch.get_num_threads()}"
    )
    seconds, test_loss = lecture_epochs(root, args.epochs)
    print("lecture loop, s/epoch: " + ", ".join(f"{s:.2f}" for s in seconds))
    print(f"final test loss: {test_loss:.2f} nats per image after {args.epochs} epoch(s)")


if __name__ == "__main__":
    main()
