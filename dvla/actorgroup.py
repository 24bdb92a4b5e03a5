"""K actor ranks training one policy: the ActorGroup port over torch.distributed (DDP or FSDP2).

The group is this process's default process group, formed once for the run on the data plane's
store (which actor rank 0 hosts) under its own prefix (gloo on CPU, NCCL on CUDA); the data plane's
epochs are groups of their own beside it.

    ddp   every rank holds the whole policy; gradients are averaged by DistributedDataParallel.
    fsdp  FSDP2 (`fully_shard` over a 1-D device mesh of the ranks): parameters, gradients and Adam
          state sharded; every forward gathers parameters, so it is a collective.

Both strategies average gradients over the ranks, so grad_scale = K turns the learner's per-rank
loss shares back into the sum. Publishing gathers the whole policy on rank 0, once per version.
"""

from __future__ import annotations

import logging
import warnings
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from dvla.dataplane.wire import HEADER_LEN, KIND_TRAJECTORIES, check_header, decode_payload, encode_batch
from dvla.net import split_address
from dvla.types import TrajectoryBatch

log = logging.getLogger("dvla.actorgroup")

STRATEGIES = ("ddp", "fsdp")
_OPS = {"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}


def form(
    rank: int,
    size: int,
    backend: str = "auto",
    timeout_s: float = 600.0,
    store: dist.Store | None = None,
    rendezvous: str = "",
) -> str:
    """Join the actor group as `rank` of `size`, on `store` (the data plane's, under 'actors/') or on a
    store of its own at `rendezvous` that rank 0 hosts; returns the backend."""
    if dist.is_initialized():
        raise RuntimeError("this process is already in a default process group; the actor group needs it")
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    timeout = timedelta(seconds=timeout_s)
    if store is None:
        host, port = split_address(rendezvous, "actor-group rendezvous")
        store = dist.TCPStore(host, port, world_size=size, is_master=rank == 0, timeout=timeout)
    store = dist.PrefixStore("actors/", store)
    dist.init_process_group(backend, store=store, rank=rank, world_size=size, timeout=timeout)
    log.info("actor group formed: rank %d of %d (%s)", rank, size, backend)
    return backend


def leave() -> None:
    """Leave the group once every rank is done with it. Drop the learner (and with it a DDP reducer)
    first: a reducer outliving its group deadlocks the interpreter's exit in gloo's worker threads."""
    if dist.is_initialized():
        import gc

        gc.collect()
        dist.barrier()
        dist.destroy_process_group()


def save_optimizer(policy: torch.nn.Module, optimizer: torch.optim.Optimizer, folder: Path) -> None:
    """Every rank of the actor group writes its optimizer state into `folder` (torch.distributed.checkpoint:
    a file per rank plus metadata, read back by any number of ranks). A collective."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    dcp.save({"optimizer": get_optimizer_state_dict(policy, optimizer)}, checkpoint_id=str(folder))


def load_optimizer(policy: torch.nn.Module, optimizer: torch.optim.Optimizer, folder: Path) -> None:
    """The optimizer state save_optimizer wrote, resharded to this process's group (or to one process
    outside any group). A collective in a group."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    state = {"optimizer": get_optimizer_state_dict(policy, optimizer)}
    dcp.load(state, checkpoint_id=str(folder))
    set_optimizer_state_dict(policy, optimizer, state["optimizer"])


def load_optimizer_state(policy: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """One actor's optimizer.pt (parameters numbered in policy.parameters() order) into an optimizer over
    sharded parameters: renamed to parameter names, then sharded by torch. Every rank passes it all."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    names = [n for n, _ in policy.named_parameters()]
    groups = state["param_groups"]
    if sum(len(g["params"]) for g in groups) != len(names):
        raise ValueError(f"it holds {sum(len(g['params']) for g in groups)} parameters, the policy {len(names)}")
    named = {
        "state": {names[int(i)]: s for i, s in state["state"].items()},
        "param_groups": [{**g, "params": [names[int(i)] for i in g["params"]]} for g in groups],
    }
    set_optimizer_state_dict(policy, optimizer, named, options=StateDictOptions(full_state_dict=True))


class DistGroup:
    """The actor group as the default process group (implements ActorGroup)."""

    def __init__(
        self, strategy: str, device: torch.device, param_dtype: str = "bfloat16", reduce_dtype: str = "float32"
    ):
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown actor strategy '{strategy}'; choose {' or '.join(STRATEGIES)}")
        if not dist.is_initialized():
            raise RuntimeError("form the actor group (dvla.actorgroup.form) before building a DistGroup")
        self.rank, self.size = dist.get_rank(), dist.get_world_size()
        self.strategy, self.device = strategy, device
        self.collective_forward = strategy == "fsdp"
        self.grad_scale = float(self.size)
        self.mixed_precision = None
        if strategy == "fsdp" and device.type == "cuda":
            from torch.distributed.fsdp import MixedPrecisionPolicy

            self.mixed_precision = MixedPrecisionPolicy(
                param_dtype=getattr(torch, param_dtype), reduce_dtype=getattr(torch, reduce_dtype)
            )
        elif strategy == "fsdp":
            log.info("actor.param_dtype/reduce_dtype apply to CUDA devices; on %s the group trains in float32", device)

    def _comm(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.device) if dist.get_backend() == "nccl" else t

    def all_reduce(self, t: torch.Tensor, op: str = "sum") -> torch.Tensor:
        work = self._comm(t)
        dist.all_reduce(work, op=_OPS[op])
        if work is not t:
            t.copy_(work)
        return t

    def send_batch(self, batch: TrajectoryBatch, dst: int) -> None:
        """As one data-plane message (dvla/dataplane/wire.py): it keeps its rollout, round and trace."""
        for t in encode_batch(batch):
            dist.send(self._comm(t), dst)

    def recv_batch(self, src: int) -> TrajectoryBatch:
        header = self._recv(torch.empty(HEADER_LEN, dtype=torch.int64), src)
        h = check_header(header)
        if h.kind != KIND_TRAJECTORIES:
            raise RuntimeError(f"actor rank {src} handed over a message of kind {h.kind}, not trajectories")
        return decode_payload(h, self._recv(torch.empty(h.payload_bytes, dtype=torch.uint8), src))

    def _recv(self, t: torch.Tensor, src: int) -> torch.Tensor:
        work = self._comm(t)
        dist.recv(work, src)
        return work.cpu()

    def _same_start(self, policy: torch.nn.Module) -> None:
        """Every rank starts from rank 0's weights (its fresh init or its restored checkpoint)."""
        for t in policy.state_dict().values():
            work = self._comm(t.detach())
            dist.broadcast(work, src=0)
            if work is not t:
                t.detach().copy_(work)

    def wrap(self, policy: torch.nn.Module) -> torch.nn.Module:
        self._same_start(policy)
        if self.strategy == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device] if self.device.type == "cuda" else None
            # GRPO never reads the value head: its parameters get no gradient, which DDP must be told
            return DistributedDataParallel(policy, device_ids=ids, find_unused_parameters=True)
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

        mesh = init_device_mesh(self.device.type, (self.size,))
        kw = {"mesh": mesh} | ({"mp_policy": self.mixed_precision} if self.mixed_precision else {})
        for unit in getattr(policy, "fsdp_units", lambda: [])():
            fully_shard(unit, **kw)  # each unit (a transformer layer) gathered only while it runs
            for method in getattr(unit, "FSDP_METHODS", ()):  # ... or while these run (a head's other entries)
                register_fsdp_forward_method(unit, method)
        fully_shard(policy, **kw)
        # evaluate() returns views (a squeezed value, a sliced chunk) that the learner never changes in place
        warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
        for method in ("evaluate", "value", "act"):
            register_fsdp_forward_method(policy, method)
        return policy

    def full_weights(self, policy: torch.nn.Module) -> dict[str, torch.Tensor] | None:
        if self.strategy == "ddp":
            return policy.export_weights() if self.rank == 0 else None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(policy, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if self.rank != 0:
            return None
        return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in full.items()}
