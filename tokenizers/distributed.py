"""Training and encoding over several processes, the way ``torchrun`` starts them.

``torchrun --nproc-per-node=N -m tok train RECIPE`` starts N copies of ``tok``;
torchrun gives each one ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``
and ``MASTER_PORT`` in its environment. :func:`process_group` turns those into a
``torch.distributed`` process group — gloo on the CPU, nccl on CUDA, one GPU per
local rank — for the length of a command, and takes it down after. Without
torchrun's variables (or with ``WORLD_SIZE=1``) it does nothing, so every command
runs the same code alone and under torchrun.

The contract, for the training loop (:mod:`tok.train`):

- rank 0 alone writes files (:func:`is_main`);
- every rank runs the same collectives in the same order: the gradient
  all-reduce of DistributedDataParallel, the quantizers' own statistics
  (:mod:`tok.helpers` ``all_reduce_``/``broadcast_``), and the ones below;
- a decision that ends or branches the loop (a non-finite loss) is taken on
  values every rank holds alike, so no rank waits for one that has left.

:func:`launch` runs a ``tok`` command through ``torchrun`` for ``--nproc N``.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import sys
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

from .errors import ConfigError, TokError
from .helpers import is_distributed, rank, world_size

__all__ = [
    "process_group",
    "is_main",
    "launched",
    "barrier",
    "gather",
    "all_ok",
    "leading",
    "follow",
    "mean_over_ranks",
    "average_gradients",
    "launch",
    "check_world",
    "my_share",
    "data_parallel",
    "rank",
    "world_size",
]


def launched() -> bool:
    """Whether this process was started by ``torchrun`` as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_main() -> bool:
    """Whether this process writes the files: rank 0, or the only process."""
    return rank() == 0


@contextlib.contextmanager
def process_group(device: torch.device) -> Iterator[torch.device]:
    """Join the process group torchrun set up (if it did) for the block; yield the
    device this rank computes on: ``device``, or on CUDA the GPU of this local rank
    (``cuda:LOCAL_RANK``). A process group that is already running (a test, a
    program of the user's) is used as it is and left running; so is the group of a
    block that raises (see the comment at its end).

    :raises ConfigError: ``cuda`` under torchrun with more local ranks than GPUs.
    """
    if not launched() or torch.distributed.is_initialized():
        yield device
        return
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise ConfigError(
                f"local rank {local} has no GPU: {torch.cuda.device_count()} visible, so "
                f"start at most that many processes per node (--nproc-per-node)"
            )
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    yield device
    # Only on success: destroying a gloo group while the other ranks are leaving on the
    # same error can abort this process (SIGABRT, "terminate called without an active
    # exception") and turn a one-line error into a crash; a failing process ends anyway.
    torch.distributed.destroy_process_group()


def _device() -> torch.device:
    """Where collectives' tensors live: the current GPU under nccl, else the CPU."""
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    """Wait until every rank is here (nothing alone)."""
    if is_distributed():
        torch.distributed.barrier()


def gather(t: Tensor) -> list[Tensor]:
    """Every rank's ``t`` (same shape and dtype on every rank), in rank order, on the
    CPU: ``[t]`` alone."""
    if not is_distributed():
        return [t.detach().cpu()]
    local = t.detach().to(_device())
    parts = [torch.empty_like(local) for _ in range(world_size())]
    torch.distributed.all_gather(parts, local)
    return [p.cpu() for p in parts]


def all_ok(ok: bool) -> bool:
    """Whether ``ok`` holds on every rank (``ok`` itself alone): after a step only some
    ranks can fail (rank 0 opening a folder), every rank learns whether to go on."""
    if not is_distributed():
        return ok
    flag = torch.tensor([int(ok)], device=_device())
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
    return bool(flag.item())


@contextlib.contextmanager
def leading() -> Iterator[Callable[[], None]]:
    """Rank 0's side of preparing what the other ranks then use (a run or token folder,
    made or checked): the block calls the yielded ``ready()`` once it is there, and the
    others, waiting in :func:`follow`, go on. If the block raises first, they are told
    to stop, rather than wait at a collective for a rank that has left."""
    said = []

    def ready() -> None:
        said.append(all_ok(True))

    try:
        yield ready
    finally:
        if not said:
            all_ok(False)


def follow(what: object) -> None:
    """The other ranks' side of :func:`leading`: wait until rank 0 has ``what`` ready.

    :raises TokError: rank 0 could not make it (rank 0 says why).
    """
    if not all_ok(True):
        raise TokError(f"rank 0 could not open {what}")


def mean_over_ranks(t: Tensor) -> Tensor:
    """The mean over ranks of ``t`` (float32, detached; ``t`` itself alone). Ranks hold
    equal shares of the global batch, so the mean of their batch means is the global
    batch mean, up to rounding."""
    t = t.detach().float()
    if not is_distributed():
        return t
    out = t.to(_device()).clone()
    torch.distributed.all_reduce(out)
    return out.div_(world_size()).to(t.device)


def average_gradients(module: nn.Module) -> None:
    """Replace every gradient of ``module`` by its mean over ranks (nothing outside
    torchrun): what DDP does for the tokenizer, for modules a loss trains itself (a
    discriminator), so every rank keeps the same weights."""
    if not is_distributed():
        return
    for p in module.parameters():
        if p.grad is not None:
            torch.distributed.all_reduce(p.grad)
            p.grad.div_(world_size())


def launch(argv: list[str], nproc: int) -> int:
    """Run ``tok ARGV`` as ``nproc`` processes on this machine, as ``torchrun --standalone
    --nproc-per-node=NPROC -m tok ARGV`` does (torch's elastic agent in this process, a
    c10d rendezvous on a free local port, one thread per process unless
    ``OMP_NUM_THREADS`` says otherwise), and return the exit code: 0, rank 0's when
    it failed, else the first failed rank's. What the ranks print is all that is shown: a failure is the ranks'
    one ``tok: error:`` line, without the agent's report and traceback around it.

    :raises ConfigError: ``nproc`` below 1, or ``--nproc`` given under torchrun.
    """
    import logging
    import uuid

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if nproc < 1:
        raise ConfigError(f"--nproc must be at least 1, not {nproc}")
    if launched():
        raise ConfigError("--nproc starts torchrun; under torchrun, leave it out")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    for name in list(logging.root.manager.loggerDict):  # the agent's reports: the ranks speak
        if name.startswith("torch.distributed"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=str(uuid.uuid4()),
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        max_restarts=0,
    )
    try:
        elastic_launch(config, sys.executable)("-u", "-m", "tok", *argv)
    except ChildFailedError as exc:  # rank 0's code: it said why; the others were stopped
        failure = exc.failures.get(0) or exc.get_first_failure()[1]
        return failure.exitcode if 0 < failure.exitcode < 256 else 1
    except SignalException as exc:  # SIGTERM, SIGINT …: the agent has stopped the ranks
        print(f"tok: stopped by {exc.sigval.name}", file=sys.stderr)
        return 128 + int(exc.sigval)
    return 0


def check_world(batch_size: int) -> None:
    """A recipe's ``batch_size`` is the global batch: it must split evenly over the ranks.

    :raises ConfigError: naming both numbers and the sizes that would work.
    """
    n = world_size()
    if batch_size % n:
        fits = [w for w in range(1, min(batch_size, 64) + 1) if batch_size % w == 0]
        raise ConfigError(
            f"train.batch_size = {batch_size} is the global batch and does not split over "
            f"{n} processes; use a multiple of {n} (--set train.batch_size=...) or "
            f"{', '.join(map(str, fits))} processes"
        )


def my_share(batch: Tensor) -> Tensor:
    """This rank's equal, contiguous share of the global ``batch`` (rows ``r·B/W`` to
    ``(r+1)·B/W``): which items make up a global batch never depends on the world size."""
    n = world_size()
    return batch.view(n, -1, *batch.shape[1:])[rank()] if n > 1 else batch


def data_parallel(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` wrapped in DistributedDataParallel under torchrun, else ``model`` itself.

    Buffers are not broadcast at each forward: the quantizers keep theirs identical
    across ranks by all-reducing their statistics. DDP looks for parameters without a
    gradient only where the quantizer has parameters (they may wait for k-means). Batch norm becomes SyncBatchNorm on
    CUDA; PyTorch has no SyncBatchNorm on the CPU, so there it is refused.

    :raises ConfigError: batch norm in a CPU process group.
    """
    if not is_distributed():
        return model
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        if device.type != "cuda":
            raise ConfigError(
                "norm = 'batch' cannot train under torchrun on the CPU: PyTorch's "
                "SyncBatchNorm runs on GPUs only, and per-process batch statistics would make "
                "the recipe mean something else at each world size; use norm = 'group'"
            )
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # the same parameters
    ids = [device.index] if device.type == "cuda" else None
    # a quantizer's parameters can sit out steps (a VQ codebook without EMA until k-means
    # has initialised it): DDP must then look for them, a graph traversal per step
    idle = any(p.requires_grad for p in getattr(model, "quantizer", nn.Module()).parameters())
    return nn.parallel.DistributedDataParallel(
        model, device_ids=ids, find_unused_parameters=idle, **_NO_BUFFER_SYNC
    )


#: DDP syncing no buffers at each forward: ``forward_sync_buffers=False`` where torch has
#: it (2.12 and later, which deprecate ``broadcast_buffers``), else ``broadcast_buffers``
_NO_BUFFER_SYNC = (
    {"forward_sync_buffers": False}
    if "forward_sync_buffers" in inspect.signature(nn.parallel.DistributedDataParallel).parameters
    else {"broadcast_buffers": False}
)
