"""Data-parallel training with ``torch.distributed`` (DistributedDataParallel).

Each of ``N`` processes holds a full copy of the model and takes its contiguous share of
every global batch; after the backward pass DDP all-reduces (averages) the gradients, so
every replica applies the same update.  With equal shares, the average of the per-process
mean losses is the mean loss of the global batch, so ``N`` processes follow the same
trajectory as one process on the whole batch (up to floating-point summation order).

The backend is ``gloo`` on CPU and ``nccl`` on CUDA; processes rendezvous through a file
(``init_method="file://…"``), so nothing listens on the network.  For several machines,
launch the same script with ``torchrun`` (see the README).
"""

from __future__ import annotations

import datetime
import os
import sys
import tempfile
import time
from typing import Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from ..errors import EdlError

#: a collective waits at most this long for the other processes (a dead peer ends the run)
COLLECTIVE_TIMEOUT = datetime.timedelta(seconds=300)


class TrainingError(EdlError):
    """A distributed training run failed (a process raised or died)."""


def _global_batches(n: int, global_batch: int, steps: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    order = torch.cat([torch.randperm(n, generator=g) for _ in range((steps * global_batch) // n + 1)])
    return [order[i * global_batch:(i + 1) * global_batch] for i in range(steps)]


def _train_steps(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batches, lr: float, rank: int,
                 world_size: int) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    for idx in batches:
        share = idx.chunk(world_size)[rank]                    # this process's contiguous share of the batch
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x[share]), y[share]).backward()
        optimizer.step()


def _worker(rank: int, world_size: int, init_file: str, model_factory: Callable[[], nn.Module],
            x: torch.Tensor, y: torch.Tensor, batches, lr: float, seed: int, out_file: str) -> None:
    torch.set_num_threads(1)
    _init_group(init_file, rank, world_size)
    try:
        torch.manual_seed(seed)
        model = nn.parallel.DistributedDataParallel(model_factory())
        dist.barrier()
        start = time.perf_counter()
        _train_steps(model, x, y, batches, lr, rank, world_size)
        dist.barrier()
        if rank == 0:
            torch.save({"state_dict": model.module.state_dict(), "seconds": time.perf_counter() - start}, out_file)
        dist.barrier()                          # leave together: a rank that exits early aborts the others
    finally:
        dist.destroy_process_group()
    _exit_quietly()


def data_parallel_train(model_factory: Callable[[], nn.Module], x: torch.Tensor, y: torch.Tensor,
                        global_batch: int, steps: int, lr: float, world_size: int = 2,
                        seed: int = 0, timing: dict | None = None) -> dict[str, torch.Tensor]:
    """Train ``steps`` SGD steps on ``world_size`` CPU processes with DDP (gloo).

    Args:
        model_factory: builds the model (called after seeding, in every process, so all
            replicas start identical; a picklable top-level callable).
        x, y: the training tensors (shared with the workers).
        global_batch: samples per step over all processes (divisible by ``world_size``).
        steps: optimizer steps.
        lr: SGD learning rate (momentum 0.9).
        world_size: processes; 1 trains in this process without ``torch.distributed``.
        seed: seeds the model initialisation and the batch order.
        timing: if given, receives ``seconds``: the training steps' wall time (process start-up excluded).

    Returns:
        The final state dict (from rank 0).
    """
    if world_size < 1 or global_batch % world_size:
        raise ValueError(f"global batch {global_batch} must split evenly over {world_size} processes")
    batches = _global_batches(len(x), global_batch, steps, seed)
    if world_size == 1:
        torch.manual_seed(seed)
        model = model_factory()
        start = time.perf_counter()
        _train_steps(model, x, y, batches, lr, 0, 1)
        if timing is not None:
            timing["seconds"] = time.perf_counter() - start
        return model.state_dict()
    with tempfile.TemporaryDirectory() as tmp:
        init_file, out_file = os.path.join(tmp, "rendezvous"), os.path.join(tmp, "state.pt")
        _spawn(_worker, (world_size, init_file, model_factory, x, y, batches, lr, seed, out_file), world_size)
        result = torch.load(out_file, weights_only=True)
    if timing is not None:
        timing["seconds"] = result["seconds"]
    return result["state_dict"]


class ShardedLoader:
    """This process's contiguous share of every batch of a loader (for DDP training).

    Batches too small to give every process at least one sample are skipped by all
    processes alike, so the replicas stay in step.
    """

    def __init__(self, loader, rank: int, world_size: int) -> None:
        self.loader, self.rank, self.world_size = loader, rank, world_size

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.loader, "set_epoch"):
            self.loader.set_epoch(epoch)

    def __iter__(self):
        for x, y in self.loader:
            if len(y) < self.world_size:
                continue
            yield x.chunk(self.world_size)[self.rank], y.chunk(self.world_size)[self.rank]


def spawn(fn: Callable, world_size: int, *args) -> None:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` processes joined in a gloo
    process group (file rendezvous in a temporary directory).

    Raises:
        TrainingError: a process failed or died; the others are stopped (no hang).
    """
    with tempfile.TemporaryDirectory() as tmp:
        _spawn(_group_worker, (world_size, os.path.join(tmp, "rendezvous"), fn, args), world_size)


def _spawn(worker: Callable, args: tuple, world_size: int) -> None:
    """``mp.spawn`` whose failures become one clear error: when one process raises or dies,
    torch stops the others, and the collectives time out instead of waiting forever."""
    try:
        mp.spawn(worker, args=args, nprocs=world_size, join=True)
    except mp.ProcessRaisedException as e:
        last = str(e).strip().splitlines()[-1] if str(e).strip() else "an exception"
        raise TrainingError(f"a training process failed: {last}") from None
    except mp.ProcessExitedException as e:
        raise TrainingError(f"a training process died ({e}); the other processes were stopped") from None


def _init_group(init_file: str, rank: int, world_size: int) -> None:
    # gloo picks a network interface from the host name; on one machine the loopback is the
    # one that always exists (containers often resolve the host name to an unusable address)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size,
                            timeout=COLLECTIVE_TIMEOUT)


def _group_worker(rank: int, world_size: int, init_file: str, fn: Callable, args: tuple) -> None:
    _init_group(init_file, rank, world_size)
    try:
        fn(rank, world_size, *args)
        dist.barrier()                          # leave together: a rank that exits early aborts the others
    finally:
        dist.destroy_process_group()
    _exit_quietly()


def _exit_quietly() -> None:
    """End a finished worker without running C++ static destructors: at interpreter exit a
    communication thread still alive can make the runtime abort ("terminate called without
    an active exception"), which would turn a successful run into a failed one."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


# --------------------------------------------------------------------------- model parallel
def _own_block(part: nn.Module, full: nn.Module, rank: int) -> nn.Module:
    """Copy block ``rank`` of ``full``'s output dimension (weight rows and bias) into ``part``."""
    n = part.weight.shape[0]
    with torch.no_grad():
        part.weight.copy_(full.weight[rank * n:(rank + 1) * n])
        if full.bias is not None:
            part.bias.copy_(full.bias[rank * n:(rank + 1) * n])
    return part


def _gather(local: torch.Tensor, world_size: int, dim: int) -> torch.Tensor:
    """Every process's block, concatenated along ``dim`` in rank order."""
    local = local.contiguous()
    blocks = [torch.empty_like(local) for _ in range(world_size)]
    dist.all_gather(blocks, local)
    return torch.cat(blocks, dim=dim)


class RowParallelLinear(nn.Module):
    """A fully connected layer split by output activations: process ``r`` of ``N`` holds
    rows ``r·out/N …`` of ``W`` (and of the bias), computes its block of ``y = W x + b``,
    and the blocks are gathered from every process (``all_gather``) into the full output.

    Args:
        layer: the full layer (each process keeps only its rows).
        rank, world_size: this process and the group size (``out_features`` divisible by it).
    """

    def __init__(self, layer: nn.Linear, rank: int, world_size: int) -> None:
        super().__init__()
        if layer.out_features % world_size:
            raise ValueError(f"{layer.out_features} outputs do not split over {world_size} processes")
        rows = layer.out_features // world_size
        self.part = _own_block(nn.Linear(layer.in_features, rows, bias=layer.bias is not None), layer, rank)
        self.world_size = world_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _gather(self.part(x), self.world_size, dim=-1)


class OutputChannelParallelConv2d(nn.Module):
    """A convolution split by output maps: process ``r`` holds filters ``r·C_out/N …``;
    the output maps are gathered from every process and concatenated."""

    def __init__(self, conv: nn.Conv2d, rank: int, world_size: int) -> None:
        super().__init__()
        if conv.out_channels % world_size or conv.groups != 1:
            raise ValueError(f"{conv.out_channels} output maps (groups=1) do not split over {world_size} processes")
        maps = conv.out_channels // world_size
        part = nn.Conv2d(conv.in_channels, maps, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                         bias=conv.bias is not None)
        self.part = _own_block(part, conv, rank)
        self.world_size = world_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _gather(self.part(x), self.world_size, dim=1)


def pipeline_forward(stage: nn.Module, x: torch.Tensor | None, rank: int, world_size: int) -> torch.Tensor | None:
    """Run a network split by layers: process ``r`` holds stage ``r``.

    Rank 0 feeds ``x``; each stage receives its input from the previous rank (shape first,
    then data), computes, and sends to the next; the last rank returns the output (the
    others return None).
    """
    if rank > 0:
        ndim = torch.empty(1, dtype=torch.int64)
        dist.recv(ndim, rank - 1)
        shape = torch.empty(int(ndim), dtype=torch.int64)
        dist.recv(shape, rank - 1)
        x = torch.empty(tuple(shape.tolist()))
        dist.recv(x, rank - 1)
    with torch.no_grad():
        y = stage(x).contiguous()
    if rank < world_size - 1:
        dist.send(torch.tensor([y.dim()], dtype=torch.int64), rank + 1)
        dist.send(torch.tensor(y.shape, dtype=torch.int64), rank + 1)
        dist.send(y, rank + 1)
        return None
    return y


# --------------------------------------------------------------------------- parameter server
class _Server:
    """The parameters ``p`` and a version counter, on the server process (rank 0)."""

    def __init__(self, params: list[torch.Tensor]) -> None:
        import threading

        self.params = params
        self.version = 0
        self.staleness: list[int] = []
        self.lock = threading.Lock()


_SERVER: _Server | None = None


def _ps_fetch() -> tuple[int, list[torch.Tensor]]:
    with _SERVER.lock:
        return _SERVER.version, [p.clone() for p in _SERVER.params]


def _ps_push(deltas: list[torch.Tensor], fetched_version: int) -> int:
    """``p′ = p + Δp``; the staleness of Δp is how many updates landed since its parameters were fetched."""
    with _SERVER.lock:
        _SERVER.staleness.append(_SERVER.version - fetched_version)
        for p, d in zip(_SERVER.params, deltas):
            p.add_(d)
        _SERVER.version += 1
        return _SERVER.version


def _ps_process(rank: int, world_size: int, init_file: str, model_factory, x, y, steps: int, lr: float,
                batch: int, seed: int, out_file: str) -> None:
    import torch.distributed.rpc as rpc

    global _SERVER
    torch.set_num_threads(1)
    os.environ.setdefault("TP_SOCKET_IFNAME", "lo")
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.manual_seed(seed)
    model = model_factory()
    if rank == 0:
        _SERVER = _Server([p.detach().clone() for p in model.parameters()])
    options = rpc.TensorPipeRpcBackendOptions(init_method=f"file://{init_file}", num_worker_threads=8)
    rpc.init_rpc(f"ps{rank}", rank=rank, world_size=world_size, rpc_backend_options=options)
    if rank > 0:                                # a worker: its shard of the data, plain SGD steps
        shard = torch.arange(len(x))[rank - 1::world_size - 1]
        g = torch.Generator().manual_seed(seed + rank)
        for _ in range(steps):
            version, params = rpc.rpc_sync("ps0", _ps_fetch)
            with torch.no_grad():
                for p, v in zip(model.parameters(), params):
                    p.copy_(v)
            idx = shard[torch.randint(len(shard), (batch,), generator=g)]
            model.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            rpc.rpc_sync("ps0", _ps_push, args=([-lr * p.grad for p in model.parameters()], version))
    rpc.shutdown()                              # waits for every worker's outstanding calls
    if rank == 0:
        with torch.no_grad():
            for p, v in zip(model.parameters(), _SERVER.params):
                p.copy_(v)
        torch.save({"state_dict": model.state_dict(), "staleness": _SERVER.staleness,
                    "version": _SERVER.version}, out_file)
    _exit_quietly()


def parameter_server_train(model_factory: Callable[[], nn.Module], x: torch.Tensor, y: torch.Tensor,
                           workers: int = 2, steps: int = 50, lr: float = 0.1, batch: int = 32,
                           seed: int = 0) -> tuple[dict[str, torch.Tensor], dict]:
    """Asynchronous SGD with a parameter server (Dean et al., NIPS'12 "DistBelief").

    Process 0 holds the parameters; each of ``workers`` processes repeatedly fetches them,
    computes ``Δp = −lr · ∇L`` on a minibatch of its own shard of the data, and pushes
    ``Δp``; the server applies ``p′ = p + Δp`` at once, without waiting for the others, so
    a worker's update may be computed on parameters that are already ``k`` updates old (its
    staleness ``k``).  Runs on ``torch.distributed.rpc`` (TensorPipe, file rendezvous).

    Returns:
        ``(state_dict, stats)`` with ``stats``: ``updates``, ``staleness`` (one value per
        update), ``mean_staleness`` and ``max_staleness``.
    """
    if workers < 1:
        raise ValueError(f"a parameter server needs at least one worker, got {workers}")
    with tempfile.TemporaryDirectory() as tmp:
        init_file, out_file = os.path.join(tmp, "rendezvous"), os.path.join(tmp, "state.pt")
        _spawn(_ps_process, (workers + 1, init_file, model_factory, x, y, steps, lr, batch, seed, out_file),
               workers + 1)
        result = torch.load(out_file, weights_only=True)
    stale = result["staleness"]
    return result["state_dict"], {"updates": result["version"], "staleness": stale,
                                  "mean_staleness": sum(stale) / max(1, len(stale)),
                                  "max_staleness": max(stale, default=0)}
