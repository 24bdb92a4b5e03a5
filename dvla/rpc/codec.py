"""Conversions between dvla's Python types and the protobuf messages."""

from __future__ import annotations

from dvla.proto.v1 import common_pb2 as pb
from dvla.proto.v1 import registry_pb2
from dvla.types import Acks, EnvSpec, Membership, Role, RunState, SenderCounts
from dvla.weights import Manifest, TensorEntry

_DTYPE_TO_PB = {
    "float32": pb.FLOAT32,
    "float16": pb.FLOAT16,
    "bfloat16": pb.BFLOAT16,
    "float64": pb.FLOAT64,
    "int64": pb.INT64,
    "int32": pb.INT32,
    "int16": pb.INT16,
    "int8": pb.INT8,
    "uint8": pb.UINT8,
    "bool": pb.BOOL,
}
_PB_TO_DTYPE = {v: k for k, v in _DTYPE_TO_PB.items()}
# The control plane's enums equal and hash like their string values, so these maps also answer plain strings
# ("actor", "member"); the *_NAMES maps give clients the enums, UNKNOWN for a code they do not know.
ROLE_TO_PB = {Role.ACTOR: pb.ACTOR, Role.ROLLOUT: pb.ROLLOUT}
PB_TO_ROLE = {v: k for k, v in ROLE_TO_PB.items()}
RUN_STATE_TO_PB = {
    RunState.STARTING: pb.STARTING,
    RunState.RUNNING: pb.RUNNING,
    RunState.FINISHED: pb.FINISHED,
    RunState.PAUSED: pb.PAUSED,
}
STATE_NAMES = {v: k for k, v in RUN_STATE_TO_PB.items()} | {pb.RUN_STATE_UNSPECIFIED: RunState.UNKNOWN}
MEMBERSHIP_TO_PB = {
    Membership.MEMBER: pb.MEMBER,
    Membership.STANDBY: pb.STANDBY,
    Membership.LEAVING: pb.LEAVING,
    Membership.LEFT: pb.LEFT,
    Membership.EVICTED: pb.EVICTED,
}
MEMBERSHIP_NAMES = {v: k for k, v in MEMBERSHIP_TO_PB.items()} | {pb.MEMBERSHIP_UNSPECIFIED: Membership.UNKNOWN}
STATS_FIELDS = [f.name for f in pb.WorkerStats.DESCRIPTOR.fields]


def manifest_to_pb(m: Manifest) -> pb.WeightManifest:
    return pb.WeightManifest(
        tensors=[
            pb.TensorSpec(
                name=t.name, dtype=_DTYPE_TO_PB[t.dtype], shape=list(t.shape), offset=t.offset, nbytes=t.nbytes
            )
            for t in m.tensors
        ],
        total_bytes=m.total_bytes,
        sha256=m.sha256,
    )


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
    return pb.EnvSpec(
        task=s.task,
        obs_dim=s.obs_dim,
        action_dim=s.action_dim,
        action_low=list(s.action_low),
        action_high=list(s.action_high),
        max_episode_steps=s.max_episode_steps,
        image_shape=list(s.image_shape),
        instruction=s.instruction,
    )


def env_spec_from_pb(s: pb.EnvSpec) -> EnvSpec | None:
    """None for an unset message; ValueError for an inconsistent one."""
    if not s.task:
        return None
    if s.obs_dim <= 0 or s.action_dim <= 0 or s.max_episode_steps <= 0:
        raise ValueError(
            f"env_spec has non-positive sizes: obs_dim={s.obs_dim} action_dim={s.action_dim} "
            f"max_episode_steps={s.max_episode_steps}"
        )
    if len(s.action_low) != s.action_dim or len(s.action_high) != s.action_dim:
        raise ValueError(
            f"env_spec action bounds have {len(s.action_low)}/{len(s.action_high)} entries "
            f"for action_dim {s.action_dim}"
        )
    if s.image_shape and (len(s.image_shape) != 3 or s.image_shape[2] != 3 or min(s.image_shape) <= 0):
        raise ValueError(f"env_spec image_shape {list(s.image_shape)} is not (H, W, 3)")
    return EnvSpec(
        s.task,
        s.obs_dim,
        s.action_dim,
        tuple(s.action_low),
        tuple(s.action_high),
        s.max_episode_steps,
        tuple(s.image_shape),
        s.instruction,
    )


def stats_to_pb(stats: dict) -> pb.WorkerStats:
    unknown = set(stats) - set(STATS_FIELDS)
    if unknown:
        raise ValueError(f"unknown stats fields: {sorted(unknown)}")
    return pb.WorkerStats(**stats)


def stats_from_pb(s: pb.WorkerStats) -> dict:
    return {name: getattr(s, name) for name in STATS_FIELDS}


def acks_to_pb(a: Acks) -> registry_pb2.Acks:
    return registry_pb2.Acks(
        checkpoint_request_done=a.checkpoint_request_done,
        checkpoint_version=a.checkpoint_version,
        checkpoint_path=a.checkpoint_path,
        left_dataplane=a.left_dataplane,
    )


def acks_from_pb(a: registry_pb2.Acks) -> Acks:
    if a.checkpoint_request_done > (1 << 62) or a.checkpoint_version < -1:
        raise ValueError(
            f"acks: checkpoint request {a.checkpoint_request_done} or version {a.checkpoint_version} out of range"
        )
    return Acks(a.checkpoint_request_done, a.checkpoint_version, a.checkpoint_path, a.left_dataplane)


def sender_to_pb(c: SenderCounts) -> registry_pb2.SenderCounts:
    return registry_pb2.SenderCounts(
        worker_key=c.worker_key,
        episodes_produced=c.episodes_produced,
        episodes_sent=c.episodes_sent,
        env_steps_produced=c.env_steps_produced,
        episodes_sent_before=c.episodes_sent_before,
    )


def sender_from_pb(c: registry_pb2.SenderCounts) -> SenderCounts:
    if not 0 < c.worker_key < (1 << 63) or not c.episodes_sent_before <= c.episodes_sent <= c.episodes_produced:
        raise ValueError(
            f"sender counts: worker_key {c.worker_key} outside [1, 2**63), or not episodes_sent_before "
            f"({c.episodes_sent_before}) <= sent ({c.episodes_sent}) <= produced ({c.episodes_produced})"
        )
    return SenderCounts(
        c.worker_key, c.episodes_produced, c.episodes_sent, c.env_steps_produced, c.episodes_sent_before
    )
