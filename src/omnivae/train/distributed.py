"""Multi-process training under ``torchrun``: one process per device, each batch split by rows.

``torchrun --nproc_per_node N -m omnivae train ...`` starts N copies of the command. Each
finds its place in the environment torchrun sets (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``,
``MASTER_ADDR``, ``MASTER_PORT``) and the trainer calls :func:`setup`, which joins the
process group (gloo on the CPU, NCCL on GPUs, process ``r`` of a machine on ``cuda:r``).
Then:

- Every process draws the same shuffled order (the data generator has the same seed
  everywhere) and trains on its contiguous part of each global batch of ``--batch-size``
  rows, so one step of N processes sees exactly the rows of one step of one process.
- After the backward pass the gradients are summed across processes, each weighted by its
  share ``n_r / n`` of the batch's rows. The objectives average over rows, so the sum is
  the gradient of the whole batch: the gradient one process computes, up to rounding,
  also when the last batch of an epoch does not split evenly. The step's loss terms travel
  in the same buffer, so every process logs the global values at no extra cost.
- Every process takes the same Adam step from the same parameters (broadcast from rank 0
  at the start), so the copies stay identical without further communication.
- Rank 0 alone writes the run directory, prints and shows progress bars.
- A stop request (SIGINT/SIGTERM; torchrun forwards the signals it gets to its workers)
  is or-ed across processes after every step, so all stop after the same step and rank 0
  checkpoints it.

Why not :class:`torch.nn.parallel.DistributedDataParallel`: DDP wraps ``forward`` and
prepares its gradient buckets there, but the objectives call many model methods
(``encode_experts``, ``aggregate``, ``log_likelihood``, ...) and never ``forward``, and
two-stage methods train different parameter sets per stage. One all-reduce of the
flattened gradients after ``backward`` is exact for every objective and stage; what DDP
would add, overlapping communication with the backward pass, buys little for networks
of this size.

Random numbers: each process has its own stream (rank 0 keeps the seed's stream, rank r a
stream derived from the seed and r), so the reparameterisation noise and ``--missing-rate``
masks are independent across the parts of a batch. The noise therefore differs from a
one-process run, which matches it exactly only for a deterministic objective. Checkpoints
store every process's generator states, so a run resumed with the same number of
processes continues bit for bit; with another number it continues correctly, with other
noise.
"""

from __future__ import annotations

import atexit
import os
import sys
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

from omnivae.data.base import Batch
from omnivae.errors import UserError

T = TypeVar("T")

__all__ = ["Distributed", "launched", "world_size", "setup", "current", "is_main", "quiet_other_ranks"]

_GOLDEN = 0x9E3779B97F4A7C15  # spreads (seed, rank) pairs over the seed space
_context: Distributed | None = None


def world_size() -> int:
    """The number of processes torchrun started (1 when not under torchrun)."""
    if "RANK" not in os.environ:
        return 1
    try:
        return max(int(os.environ.get("WORLD_SIZE", "1")), 1)
    except ValueError:
        return 1


def launched() -> bool:
    """True in a worker of a torchrun launch with more than one process."""
    return world_size() > 1


def rank_seed(seed: int, rank: int) -> int:
    """The seed of process ``rank``'s random stream (rank 0 keeps ``seed``)."""
    return seed if rank == 0 else (seed + rank * _GOLDEN) % 2**63


@dataclass
class Distributed:
    """This process's place in a torchrun launch and the collective operations of training.

    Attributes:
        rank: Global rank, 0 to ``world_size - 1``; rank 0 writes and prints.
        world_size: Number of processes.
        local_rank: Rank on this machine (picks the GPU).
        device: Where this process trains.
        control: A gloo group for small CPU tensors (stop flags, generator states);
            ``None`` when the default group is gloo itself.
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    control: Any = None
    _weight: float = field(default=1.0, repr=False)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # -- data ------------------------------------------------------------------------------
    def local_part(self, batch: Batch) -> Batch:
        """This process's contiguous rows of a global batch; remembers its share of the rows.

        Shares differ by at most one row. A process left without a row (a last batch
        smaller than the number of processes) trains on the batch's first row with weight
        zero, so that it still takes part in the gradient sum.
        """
        n = len(batch)
        start, stop = self.rank * n // self.world_size, (self.rank + 1) * n // self.world_size
        self._weight = (stop - start) / n
        if stop == start:
            start, stop = 0, 1

        def part(t: Tensor) -> Tensor:
            return t[start:stop]

        return Batch(
            {k: part(v) for k, v in batch.x.items()},
            {k: part(v) for k, v in batch.mask.items()},
            None if batch.labels is None else part(batch.labels),
        )

    # -- gradients ---------------------------------------------------------------------------
    def all_reduce_step(self, optimizer: torch.optim.Optimizer, terms: dict[str, Tensor]) -> dict[str, Tensor]:
        """Replace every gradient by the global batch's; return the batch's ``terms``.

        One all-reduce of one flat buffer: each process's gradients and terms (the loss and
        the objective's terms, batch means) weighted by its share of the rows
        (:meth:`local_part`), then summed. A parameter keeps ``None`` as its gradient when
        no process gave it one, as in one process (Adam skips it). Call between
        ``loss.backward()`` and ``optimizer.step()``.
        """
        params = [p for group in optimizer.param_groups for p in group["params"]]
        terms = {k: torch.as_tensor(v).detach() for k, v in terms.items()}
        dtype = torch.float32
        for t in [*params, *terms.values()]:
            if t.is_floating_point():
                dtype = torch.promote_types(dtype, t.dtype)
        weight = self._weight
        present = torch.tensor([float(p.grad is not None and weight > 0) for p in params], dtype=dtype)
        pieces = [
            (p.grad.reshape(-1) if p.grad is not None else torch.zeros(p.numel(), device=p.device)).to(dtype) * weight
            for p in params
        ]
        pieces += [t.reshape(-1).to(self.device, dtype) * weight for t in terms.values()]
        if self.control is None:  # gloo: the flags ride in the buffer (on the CPU, no waiting)
            pieces.append(present.to(self.device))
        else:  # NCCL: agree on them on the CPU, so that the host never waits for the GPU
            dist.all_reduce(present, op=dist.ReduceOp.SUM, group=self.control)
        buffer = torch.cat(pieces)
        dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
        offset = 0
        for p in params:
            p.grad = buffer[offset : offset + p.numel()].view_as(p).to(p.dtype)
            offset += p.numel()
        reduced = {}
        for key, value in terms.items():
            reduced[key] = buffer[offset : offset + value.numel()].view_as(value).to(value.dtype)
            offset += value.numel()
        if self.control is None:
            present = buffer[offset:]
        for p, count in zip(params, present.tolist(), strict=False):
            if count == 0:  # no process had a gradient: leave it to Adam to skip, as one process does
                p.grad = None
        return reduced

    # -- control -----------------------------------------------------------------------------
    def any(self, flag: bool) -> bool:
        """True if ``flag`` is true in any process (a tiny CPU all-reduce)."""
        value = torch.tensor([1.0 if flag else 0.0])
        dist.all_reduce(value, op=dist.ReduceOp.MAX, group=self.control)
        return bool(value.item() > 0)

    def broadcast_module(self, module: torch.nn.Module) -> None:
        """Give every process rank 0's parameters and buffers."""
        with torch.no_grad():
            for tensor in [*module.parameters(), *module.buffers()]:
                dist.broadcast(tensor.data, src=0)

    def broadcast_object(self, obj: T) -> T:
        """Rank 0's ``obj`` (any picklable value) in every process."""
        box = [obj]
        dist.broadcast_object_list(box, src=0, group=self.control)
        return box[0]

    # -- random states -----------------------------------------------------------------------
    def seed(self, seed: int) -> None:
        """Give this process its own random stream (rank 0 keeps the seed's)."""
        torch.manual_seed(rank_seed(seed, self.rank))

    def rng_states(self) -> dict[str, Tensor]:
        """Every process's generator states, keyed ``rng/torch/rankR`` (and ``rng/cuda/rankR``)
        for ranks R >= 1; the checkpoint stores rank 0's under the usual keys. Collective."""
        states = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            states["cuda"] = torch.cuda.get_rng_state(self.device)
        gathered: dict[str, Tensor] = {}
        for name, state in states.items():
            parts = [torch.empty_like(state) for _ in range(self.world_size)]
            dist.all_gather(parts, state, group=self.control)
            gathered.update({f"rng/{name}/rank{r}": parts[r] for r in range(1, self.world_size)})
        return gathered

    def restore_rng_states(self, state: dict[str, Tensor], seed: int, step: int) -> None:
        """Set this process's generators from a checkpoint (rank 0 reads the usual keys, set
        by the trainer). A rank the checkpoint lacks (it was written by fewer processes)
        gets a fresh stream derived from the seed, the rank and the step."""
        if self.rank == 0:
            return
        key = f"rng/torch/rank{self.rank}"
        if key in state:
            torch.set_rng_state(state[key])
            if self.device.type == "cuda" and f"rng/cuda/rank{self.rank}" in state:
                torch.cuda.set_rng_state(state[f"rng/cuda/rank{self.rank}"], self.device)
        else:
            torch.manual_seed(rank_seed((seed + step * 7919) % 2**63, self.rank))


def setup(device: torch.device) -> Distributed | None:
    """Join the torchrun launch this process belongs to; ``None`` when it runs alone.

    ``device`` is the resolved ``--device``: on a GPU, process ``LOCAL_RANK`` of a machine
    uses ``cuda:LOCAL_RANK`` (an explicit index would put every process on one GPU and is
    refused). Calling it again returns the same context. The process group is destroyed
    when the process exits.
    """
    global _context
    if _context is not None:
        return _context
    if not launched():
        return None
    try:
        local = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        raise UserError("torchrun's environment variable LOCAL_RANK is not an integer") from None
    if device.type == "cuda":
        if device.index is not None:
            raise UserError(
                f"device {device} under torchrun: each process uses the GPU cuda:LOCAL_RANK; "
                "give device='cuda' (choose the GPUs with CUDA_VISIBLE_DEVICES)", parameter="device"
            )
        if local >= torch.cuda.device_count():
            raise UserError(
                f"torchrun started process {local} on this machine but only "
                f"{torch.cuda.device_count()} CUDA device(s) are present; lower --nproc_per_node"
            )
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
        atexit.register(_shutdown)
    control = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else None
    _context = Distributed(dist.get_rank(), dist.get_world_size(), local, device, control)
    return _context


def _shutdown() -> None:
    global _context
    _context = None
    if dist.is_initialized():
        dist.destroy_process_group()


def current() -> Distributed | None:
    """The context :func:`setup` made, if any."""
    return _context


def is_main() -> bool:
    """True in rank 0 of a launch, and in a process that runs alone."""
    return _context is None or _context.is_main


def quiet_other_ranks() -> None:
    """In ranks other than 0 of a torchrun launch, discard standard output (the command's
    messages and summaries); standard error stays, so a rank's own failure is seen."""
    if launched() and os.environ.get("RANK", "0") != "0":
        sys.stdout = open(os.devnull, "w")
