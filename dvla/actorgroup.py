"""K actor ranks training one policy: the ActorGroup port over torch.distributed (DDP or FSDP2).

The group is this process's default process group, formed once for the run from a rendezvous that
actor rank 0 hosts (gloo on CPU, NCCL on CUDA); the data plane keeps its own groups apart from it.

    ddp   every rank holds the whole policy; gradients are averaged by DistributedDataParallel.
    fsdp  FSDP2 (`fully_shard` over a 1-D device mesh of the ranks): parameters, gradients and Adam
          state sharded; every forward gathers parameters, so it is a collective.

Both strategies average gradients over the ranks, so grad_scale = K turns the learner's per-rank
loss shares back into the sum. Publishing gathers the whole policy on rank 0, once per version.
"""

from __future__ import annotations

import logging
from datetime import timedelta

import torch
import torch.distributed as dist

from dvla.net import split_address

log = logging.getLogger("dvla.actorgroup")

STRATEGIES = ("ddp", "fsdp")
_OPS = {"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}


def form(rendezvous: str, rank: int, size: int, backend: str = "auto", timeout_s: float = 600.0) -> str:
    """Join the actor group as `rank` of `size` (rank 0 hosts the store at `rendezvous`); its backend."""
    if dist.is_initialized():
        raise RuntimeError("this process is already in a default process group; the actor group needs it")
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    host, port = split_address(rendezvous, "actor-group rendezvous")
    store = dist.TCPStore(host, port, world_size=size, is_master=rank == 0, timeout=timedelta(seconds=timeout_s))
    dist.init_process_group(backend, store=store, rank=rank, world_size=size, timeout=timedelta(seconds=timeout_s))
    return backend


def leave() -> None:
    """Leave the group once every rank is done with it. Drop the learner (and with it a DDP reducer)
    first: a reducer outliving its group deadlocks the interpreter's exit in gloo's worker threads."""
    if dist.is_initialized():
        import gc

        gc.collect()
        dist.barrier()
        dist.destroy_process_group()


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
        fully_shard(policy, **kw)
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
