"""Worker of ``test_lfq_ddp.py``: run by ``torchrun --nproc_per_node=2`` (gloo, CPU).

Every rank builds the same LFQ (same seed) and computes the training loss on
its own batch (a seed per rank). Gradients are averaged over ranks as DDP
does. Rank 0 then computes the same loss in one process on every rank's
batch at once, with ``torch.distributed`` switched off, and prints one line
per config: ``<name>: batch entropy <match|DIFFERENT>; gradient <match|DIFFERENT>``.
"""

from __future__ import annotations

import sys
from unittest import mock

import torch
import torch.distributed as dist

import tok.helpers
import tok.plugins.lfq as lfq_module
from tok.plugins.lfq import LFQ

CONFIGS = {
    "exact": {"bits": 6, "dim": 8, "num_codebooks": 2, "inv_temperature": 1.0},
    "factorised": {"bits": 16, "dim": 8, "inv_temperature": 1.0},
}


def build(config: dict) -> LFQ:
    torch.manual_seed(0)
    return LFQ(**config, commitment_weight=0.0).train()


def main() -> int:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    for name, config in CONFIGS.items():
        q = build(config)
        batches = []
        for r in range(world):
            torch.manual_seed(100 + r)
            batches.append(torch.randn(3, 10, config["dim"]) + r)
        out = q(batches[rank])
        out.aux_loss.backward()
        grad = q.project_in.weight.grad.clone()
        dist.all_reduce(grad)
        grad /= world  # what DDP does
        entropy = out.metrics["batch_entropy"].clone()
        if rank == 0:
            with (
                mock.patch.object(lfq_module, "is_distributed", lambda: False),
                mock.patch.object(tok.helpers, "is_distributed", lambda: False),
            ):
                single = build(config)
                ref = single(torch.cat(batches))
                ref.aux_loss.backward()
            same_entropy = torch.allclose(
                entropy, ref.metrics["batch_entropy"], rtol=1e-5, atol=1e-6
            )
            same_grad = torch.allclose(grad, single.project_in.weight.grad, rtol=1e-4, atol=1e-7)
            print(
                f"{name}: batch entropy {'match' if same_entropy else 'DIFFERENT'}; "
                f"gradient {'match' if same_grad else 'DIFFERENT'}",
                flush=True,
            )
        dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
