"""Conversions between dvla's Python types and the protobuf messages."""
from __future__ import annotations

from dvla.control.registry import Membership, Role
from dvla.control.run import RunState
from dvla.proto.v1 import common_pb2 as pb
from dvla.types import EnvSpec
from dvla.weights import Manifest, TensorEntry

_DTYPE_TO_PB = {
    "float32": pb.FLOAT32, "float16": pb.FLOAT16, "bfloat16": pb.BFLOAT16, "float64": pb.FLOAT64,
    "int64": pb.INT64, "int32": pb.INT32, "int16": pb.INT16, "int8": pb.INT8,
    "uint8": pb.UINT8, "bool": pb.BOOL,
}
_PB_TO_DTYPE = {v: k for k, v in _DTYPE_TO_PB.items()}
# The control plane's enums equal and hash like their string values, so these maps also answer plain strings
# ("actor", "member"); the *_NAMES maps give clients plain strings, "unknown" for a code they do not know.
ROLE_TO_PB = {Role.ACTOR: pb.ACTOR, Role.ROLLOUT: pb.ROLLOUT}
PB_TO_ROLE = {v: k for k, v in ROLE_TO_PB.items()}
RUN_STATE_TO_PB = {RunState.STARTING: pb.STARTING, RunState.RUNNING: pb.RUNNING, RunState.FINISHED: pb.FINISHED,
                   RunState.PAUSED: pb.PAUSED}
STATE_NAMES = {v: k.value for k, v in RUN_STATE_TO_PB.items()} | {pb.RUN_STATE_UNSPECIFIED: "unknown"}
MEMBERSHIP_TO_PB = {Membership.MEMBER: pb.MEMBER, Membership.STANDBY: pb.STANDBY, Membership.LEAVING: pb.LEAVING,
                    Membership.LEFT: pb.LEFT}
MEMBERSHIP_NAMES = {v: k.value for k, v in MEMBERSHIP_TO_PB.items()} | {pb.MEMBERSHIP_UNSPECIFIED: "unknown"}
STATS_FIELDS = [f.name for f in pb.WorkerStats.DESCRIPTOR.fields]


def manifest_to_pb(m: Manifest) -> pb.WeightManifest:
    return pb.WeightManifest(
        tensors=[pb.TensorSpec(name=t.name, dtype=_DTYPE_TO_PB[t.dtype], shape=list(t.shape), offset=t.offset, nbytes=t.nbytes)
                 for t in m.tensors],
        total_bytes=m.total_bytes, sha256=m.sha256)


def manifest_from_pb(m: pb.WeightManifest) -> Manifest:
    """Raises ValueError on an unknown dtype or an inconsistent manifest."""
    entries = []
    for t in m.tensors:
        if t.dtype not in _PB_TO_DTYPE:
            raise ValueError(f"tensor '{t.name}': unknown dtype code {t.dtype}")
        entries.append(TensorEntry(t.name, _PB_TO_DTYPE[t.dtype], tuple(t.shape), t.offset, t.nbytes))
    out = Manifest(tuple(entries), m.total_bytes, m.sha256)
    out.validate()
    return out


def env_spec_to_pb(s: EnvSpec) -> pb.EnvSpec:
    return pb.EnvSpec(task=s.task, obs_dim=s.obs_dim, action_dim=s.action_dim, action_low=list(s.action_low),
                      action_high=list(s.action_high), max_episode_steps=s.max_episode_steps,
                      image_shape=list(s.image_shape), instruction=s.instruction)


def env_spec_from_pb(s: pb.EnvSpec) -> EnvSpec | None:
    """None for an unset message; ValueError for an inconsistent one."""
    if not s.task:
        return None
    if s.obs_dim <= 0 or s.action_dim <= 0 or s.max_episode_steps <= 0:
        raise ValueError(f"env_spec has non-positive sizes: obs_dim={s.obs_dim} action_dim={s.action_dim} max_episode_steps={s.max_episode_steps}")
    if len(s.action_low) != s.action_dim or len(s.action_high) != s.action_dim:
        raise ValueError(f"env_spec action bounds have {len(s.action_low)}/{len(s.action_high)} entries for action_dim {s.action_dim}")
    if s.image_shape and (len(s.image_shape) != 3 or s.image_shape[2] != 3 or min(s.image_shape) <= 0):
        raise ValueError(f"env_spec image_shape {list(s.image_shape)} is not (H, W, 3)")
    return EnvSpec(s.task, s.obs_dim, s.action_dim, tuple(s.action_low), tuple(s.action_high), s.max_episode_steps,
                   tuple(s.image_shape), s.instruction)


def stats_to_pb(stats: dict) -> pb.WorkerStats:
    unknown = set(stats) - set(STATS_FIELDS)
    if unknown:
        raise ValueError(f"unknown stats fields: {sorted(unknown)}")
    return pb.WorkerStats(**stats)


def stats_from_pb(s: pb.WorkerStats) -> dict:
    return {name: getattr(s, name) for name in STATS_FIELDS}
