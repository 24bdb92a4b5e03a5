"""`dvla admin`: steer and inspect a live run through weight_control's Admin service.

    dvla admin status|pause|resume|checkpoint --control HOST:PORT [--json]
    dvla admin rescale --rollouts N | --worker ID --shards K

The token (DVLA_TOKEN) and TLS settings come from the same configuration the
services read (--config, --preset, overrides, DVLA_* variables). Formatting
is pure: `format_status` turns a StatusReply into the text an operator reads.
"""

from __future__ import annotations

import json

from google.protobuf.json_format import MessageToDict

from dvla.proto.v1 import admin_pb2
from dvla.rpc import codec
from dvla.types import Membership, RunState


def _duration(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def format_status(r: admin_pb2.StatusReply) -> str:
    """Human-readable Status: the run, its counters, then one line per worker."""
    state = codec.STATE_NAMES.get(r.state, RunState.UNKNOWN)
    version = (
        f"version {r.latest_version}" + (" (final)" if r.versions and r.versions[-1].final else "")
        if r.has_version
        else "no version yet"
    )
    t = r.totals
    missing = ", ".join(f"{a.worker_id} silent for {a.silent_s:.0f} s" for a in r.actors_missing)
    lines = [
        f"run {state}, {version}, up {_duration(r.uptime_s)}"
        + (f"; actor started again {r.actor_incarnation} time(s)" if r.actor_incarnation else "")
        + (f"; ACTOR MISSING: {missing}" if missing else ""),
        f"world: data-plane epoch {r.epoch}, {max(r.num_actors, 1)} actor rank(s), "
        f"{r.target_rollouts} rollout worker(s) wanted, "
        f"{r.episodes_per_update} episodes per update",
        f"episodes: produced {t.episodes_produced}  sent {t.episodes_sent}  received {t.episodes_received}  "
        f"trained {t.episodes_trained}  dropped {t.episodes_dropped}  lost {t.episodes_lost}  "
        f"in flight {t.episodes_in_flight}",
        f"  in flight by place: unsent {t.episodes_unsent}  on the wire {t.episodes_on_wire}  "
        f"queued {t.episodes_queued}  in training {t.episodes_in_training}",
        f"env steps produced: {t.env_steps_produced}",
    ]
    if r.placement.placement:  # the launcher's measured placement (pipeline.placement=auto)
        p = r.placement
        lines.append(f"placement: {p.placement} ({p.detail}) since update {p.update}: {p.reason}")
    if r.versions:
        kept = ", ".join(str(v.version) for v in r.versions)
        newest = r.versions[-1]
        if newest.partial:  # policy.frozen: only what trains travels
            whole = next((v for v in r.versions if v.version == newest.base_version), None)
            size = f"{newest.total_bytes / 2**20:.1f} MiB each, partial on v{newest.base_version}" + (
                f" of {whole.total_bytes / 2**20:.1f} MiB" if whole else "")  # fmt: skip
        else:
            size = f"{newest.total_bytes / 2**20:.1f} MiB each"
        lines.append(f"versions held: {kept} ({size})")
    header = (
        f"{'WORKER':<14} {'ROLE':<8} {'STATUS':<8} {'RANK':>4} {'ADDRESS':<18} {'ALIVE':<5} {'SEEN':>6} "
        f"{'VERSION':>7} {'SHARDS':>6} {'ENVS':>4} {'STEPS/S':>8} {'BUSY':>5} {'EPISODES':>8} {'QUEUE':>5} {'STALE':>5}"
    )
    lines += ["", header]
    for w in r.workers:  # members by rank, then leaving, standby, left, evicted
        s = w.stats
        role = codec.PB_TO_ROLE.get(w.role, "?")
        busy = s.busy_s / s.loop_s if s.loop_s > 0 else 0.0
        episodes = s.episodes_trained if role == "actor" else s.episodes_sent
        # actor: rollout batches waiting to be trained on, and the mean version lag of its last update;
        # rollout: observations waiting for an inference batch
        queue = s.batches_queued if role == "actor" else s.inference_queue
        stale = f"{s.staleness_mean:.2f}" if role == "actor" else "-"
        member = codec.MEMBERSHIP_NAMES.get(w.membership, "?")
        rank = str(w.rank) if w.rank >= 0 else "-"
        shards = str(s.num_shards) if s.num_shards else "-"
        alive = "yes" if w.alive else ("-" if member == Membership.LEFT else "NO")
        lines.append(
            f"{w.worker_id[:14]:<14} {role:<8} {member:<8} {rank:>4} {(w.address or '-')[:18]:<18} "
            f"{alive:<5} {w.last_seen_s_ago:>5.1f}s {s.policy_version:>7} {shards:>6} "
            f"{s.num_envs:>4} {s.env_steps_per_s:>8.0f} {busy:>5.2f} {episodes:>8} {queue:>5} {stale:>5}"
        )
    if not r.workers:
        lines.append("(no workers registered)")
    return "\n".join(lines)


def format_rescale(r: admin_pb2.RescaleReply) -> str:
    lines = [
        f"rescaled: {r.target_rollouts} rollout worker(s) wanted, data-plane epoch {r.epoch}, "
        f"{r.episodes_per_update} episodes per update"
    ]
    if r.leaving:
        lines.append(f"leaving (they finish and send what they hold, then exit): {', '.join(r.leaving)}")
    if r.standby_admitted:
        lines.append(f"admitted from standby: {r.standby_admitted}")
    return "\n".join(lines)


def format_checkpoint(r: admin_pb2.CheckpointReply) -> str:
    if not r.done:
        return f"checkpoint request {r.request} sent: the actor writes it after its current update"
    return f"checkpoint request {r.request}: version {r.version} written to {r.path}"


def as_json(r) -> str:
    return json.dumps(
        MessageToDict(r, preserving_proto_field_name=True, always_print_fields_with_no_presence=True), indent=2
    )
