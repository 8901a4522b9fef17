"""Worker of ``test_vq_ddp.py``: run by ``torchrun --nproc_per_node=2`` (gloo, CPU).

Every rank builds the same VQ (same seed), then trains it on *different*
data (a seed per rank, a different batch size per rank) for a few steps with
k-means initialisation, EMA updates and dead-code restarts. Rank 0 then
compares every rank's state dict bit for bit and prints one line per config:
``<name>: identical`` or ``<name>: DIFFERENT <buffers>``.

As a control, the same training with the synchronisation switched off
(``is_distributed`` patched to ``False``) must end with different codebooks,
so the check would catch a missing all-reduce or broadcast.
"""

from __future__ import annotations

import sys
from unittest import mock

import torch
import torch.distributed as dist

import tok.helpers
import tok.plugins.vq as vq_module
from tok.plugins.vq import VQ

CONFIGS = {
    "ema-kmeans-restart": {"dim": 6, "codebook_size": 32, "kmeans_init": True, "restart_after": 2},
    "ema-cosine-restart": {"dim": 6, "codebook_size": 32, "cosine": True, "restart_after": 1},
    "learned-kmeans-restart": {
        "dim": 6,
        "codebook_size": 32,
        "ema": False,
        "kmeans_init": True,
        "restart_after": 2,
    },
}
STEPS = 12


def train(config: dict, rank: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)  # the same initial codebook on every rank
    q = VQ(**config).train()
    torch.manual_seed(100 + rank)  # different data and RNG streams on each rank
    centres = torch.randn(8, config["dim"]) * 4 + 2 * rank
    restarts = 0
    for _ in range(STEPS):
        n = 40 + 24 * rank
        z = centres[torch.randint(8, (n,))] + 0.2 * torch.randn(n, config["dim"])
        before = q.unused_steps.clone()
        q(z.view(1, n, -1))
        restarts += int(((before + 1 >= q.restart_after) & (q.unused_steps == 0)).sum())
    state = {k: v.detach().clone() for k, v in q.state_dict().items()}
    state["restarts"] = torch.tensor(restarts)
    return state


def differing(state: dict[str, torch.Tensor], world: int) -> list[str]:
    """Names of the tensors that are not bit-identical on every rank."""
    bad = []
    for key, value in sorted(state.items()):
        gathered = [torch.empty_like(value) for _ in range(world)]
        dist.all_gather(gathered, value.contiguous())
        if not all(torch.equal(gathered[0], g) for g in gathered[1:]):
            bad.append(key)
    return bad


def main() -> int:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    failed = False
    for name, config in CONFIGS.items():
        state = train(config, rank)
        bad = differing({k: v for k, v in state.items() if k != "restarts"}, world)
        with (
            mock.patch.object(vq_module, "is_distributed", lambda: False),
            mock.patch.object(tok.helpers, "is_distributed", lambda: False),
        ):
            unsynced = train(config, rank)
        control = differing({"codebook": unsynced["codebook"]}, world)
        if rank == 0:
            verdict = "identical" if not bad else "DIFFERENT " + ",".join(bad)
            print(
                f"{name}: {verdict}; restarts {int(state['restarts'])}; "
                f"without sync: {'different' if control else 'SAME'}",
                flush=True,
            )
        failed |= bool(bad) or not control or int(state["restarts"]) == 0
    dist.destroy_process_group()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
