"""The `dvla` command."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from dvla.config import MODES, PRESETS, RunConfig, describe, load_config


def main(argv: list[str] | None = None) -> int:
    ap = parser()
    try:
        argv = dashed_overrides(sys.argv[1:] if argv is None else list(argv))
    except ValueError as e:
        ap.error(str(e))
    # Overrides may follow options too (argparse gives a positional list only one run of tokens).
    args, extra = ap.parse_known_args(argv)
    stray = [t for t in extra if t.startswith("-") or "=" not in t]
    if stray:
        ap.error(f"unrecognized arguments: {' '.join(stray)}")
    args.overrides = list(getattr(args, "overrides", []) or []) + extra
    return {"admin": admin, "bench": bench_command, "chaos": chaos_command, "run": run_command}[args.cmd](args)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="dvla", description="Asynchronous RL for robot policies (D-VLA on ManiSkill3)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="train on this machine: weight_control, actor and rollouts as separate processes")
    r.add_argument("--config", help="YAML config file")
    r.add_argument("--preset", choices=sorted(PRESETS), help="named preset (default: pushcube)")
    r.add_argument(
        "--resume",
        metavar="DIR",
        help="continue a run from a checkpoint folder, or from the newest "
        "checkpoint of a run folder: the config is the checkpoint's, overrides apply on top (e.g. "
        "pipeline.num_updates=400), version numbers continue, outputs go to a new run folder",
    )
    r.add_argument("--no-progress", action="store_true", help="print a line per update instead of a progress bar")
    r.add_argument("--help-config", action="store_true", help="list every config field with its doc and exit")
    r.add_argument("overrides", nargs="*", help="section.field=value, e.g. algo.lr=1e-3 pipeline.num_updates=20")
    b = sub.add_parser(
        "bench", help="every pipeline mode on the same budget: table, CSV and chart in runs/bench-<time>/"
    )
    b.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {','.join(MODES)}")
    b.add_argument("--out-dir", default="runs", help="folder for the bench-<time> folder")
    b.add_argument("--no-publish-check", action="store_true", help="skip the publish-stall measurement")
    b.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="rounds of the modes, one after another: each row is a mode's median run and x sync the median "
        "of its ratios to the sync run of the same round (a noisy machine's drift hits both alike)",
    )
    b.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="bench this preset's task and model (e.g. a VLA) instead of the balanced MLP default",
    )
    b.add_argument(
        "--actors",
        default="",
        help="actor groups instead of modes: comma-separated numbers of actor ranks, e.g. 1,2 (with --ratios)",
    )
    b.add_argument("--ratios", default="1:1,2:1,3:1", help="with --actors: rollout:actor ratios, e.g. 1:1,2:1,3:1")
    b.add_argument("--mode", default="swimlane", help="with --actors: the pipeline mode of every layout")
    b.add_argument(
        "--weights",
        action="store_true",
        help="the weight plane instead of modes: fetches over gRPC and the bulk port beside raw TCP, one and many "
        "at once, N rollouts on a node through the node cache, and the publish stall (runs/bench-weights-<time>/)",
    )
    b.add_argument("--weight-mib", type=int, default=64, help="with --weights: the size of a version, in MiB")
    b.add_argument("--concurrent", default="1,4,16,50", help="with --weights: numbers of fetchers at once")
    b.add_argument("--node", default="1,2,4,8,16", help="with --weights: numbers of rollouts on the node")
    b.add_argument(
        "--scaling",
        action="store_true",
        help="the scaling model instead of modes: swimlane measured with --workers rollouts here, the model "
        "calibrated and checked on them, then predicted for 8-256 rollouts x 1-8 actors (runs/bench-scaling-<time>/)",
    )
    b.add_argument("--workers", default="1,2,3,4", help="with --scaling: numbers of rollouts to measure here")
    b.add_argument("overrides", nargs="*", help="section.field=value on top of the balanced default")
    c = sub.add_parser(
        "chaos",
        help="a run with a rollout worker killed every --every seconds (the actor once, --actor-at, and weight_control "
        "once, --control-at): how "
        "long faults took to detect and recover from, and whether the ledger balances (table, faults.csv, "
        "chaos.json in the run folder)",
    )
    c.add_argument("--config", help="YAML config file")
    c.add_argument("--preset", choices=sorted(PRESETS), help="named preset (default: pushcube)")
    c.add_argument("--every", type=float, default=20.0, help="seconds between two faults, on average")
    c.add_argument("--seed", type=int, default=0, help="seed of the fault schedule")
    c.add_argument(
        "--actor-at",
        type=float,
        help="also kill the actor once, when this share of the updates is done (e.g. 0.4); it starts again from "
        "the newest checkpoint (checkpoint.every_updates must be > 0)",
    )
    c.add_argument(
        "--actor-rank",
        type=int,
        default=0,
        help="with --actor-at and pipeline.num_actors > 1: which actor rank to kill (the group restarts together)",
    )
    c.add_argument(
        "--control-at",
        type=float,
        help="also kill weight_control once, when this share of the updates is done (e.g. 0.2); it starts again "
        "on the same port and the workers register with it again; equal to --actor-at: right after the actor's "
        "death is seen, while it is down",
    )
    c.add_argument("overrides", nargs="*", help="section.field=value, e.g. pipeline.num_updates=100")
    a = sub.add_parser("admin", help="inspect and steer a live run through weight_control's Admin API")
    a.add_argument(
        "verb",
        choices=["status", "pause", "resume", "rescale", "checkpoint"],
        help="status: workers, versions and episode counters; pause: rollouts finish the episodes "
        "under way and start no new ones; resume: they start again; rescale: change the number "
        "of rollout workers (--rollouts) or one worker's env shards (--worker, --shards); "
        "checkpoint: the actor writes one after its current update",
    )
    a.add_argument("--rollouts", type=int, default=0, help="rescale: rollout workers wanted")
    a.add_argument("--worker", default="", help="rescale: the rollout worker whose env shards change")
    a.add_argument("--shards", type=int, default=0, help="rescale: env shard processes for --worker")
    a.add_argument("--no-wait", action="store_true", help="checkpoint: return once requested, not once written")
    a.add_argument("--timeout", type=float, default=300.0, help="checkpoint: seconds to wait for it")
    a.add_argument(
        "--control",
        default=os.environ.get("DVLA_CONTROL"),
        help="weight_control host:port (env DVLA_CONTROL; default from control.host/port)",
    )
    a.add_argument("--json", action="store_true", help="machine-readable output")
    a.add_argument("--config", default=os.environ.get("DVLA_CONFIG"), help="YAML config (token and TLS settings)")
    a.add_argument("overrides", nargs="*", help="section.field=value, e.g. control.tls_ca=ca.pem")
    return ap


def bench_command(args: argparse.Namespace) -> int:
    from dvla.bench import run_bench

    try:
        if args.weights:
            from dvla.bench_weights import run_weight_bench

            ints = lambda text: tuple(int(k) for k in text.split(",") if k)  # noqa: E731
            if args.weight_mib < 1:
                raise ValueError(f"--weight-mib must be >= 1, got {args.weight_mib}")
            run_weight_bench(Path(args.out_dir), mib=args.weight_mib, concurrent=ints(args.concurrent),
                             node=ints(args.node), publish_check=not args.no_publish_check)  # fmt: skip
            return 0
        if args.scaling:
            from dvla.bench_scaling import run_scaling_bench

            workers = [int(k) for k in args.workers.split(",") if k]
            run_scaling_bench(workers, args.overrides, Path(args.out_dir), preset=args.preset)
            return 0
        if args.actors:
            from dvla.bench_groups import run_group_bench

            actors = [int(k) for k in args.actors.split(",") if k]
            run_group_bench(actors, [r for r in args.ratios.split(",") if r], args.overrides, Path(args.out_dir),
                            mode=args.mode)  # fmt: skip
            return 0
        run_bench(
            [m for m in args.modes.split(",") if m],
            args.overrides,
            Path(args.out_dir),
            publish_check=not args.no_publish_check,
            preset=args.preset,
            repeat=args.repeat,
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def chaos_command(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config, args.overrides, args.preset)
        if not args.every >= 0:
            raise ValueError(f"--every must be >= 0 seconds (0: no rollout is killed), got {args.every}")
        for flag, at in (("--actor-at", args.actor_at), ("--control-at", args.control_at)):
            if at is not None and not 0 < at < 1:
                raise ValueError(f"{flag} is a share of the updates, in (0, 1); got {at}")
        if args.actor_at is not None and not cfg.checkpoint.every_updates:
            raise ValueError("--actor-at needs checkpoints to restart from: set checkpoint.every_updates > 0")
        if not 0 <= args.actor_rank < cfg.pipeline.num_actors:
            raise ValueError(f"--actor-rank must be in [0, pipeline.num_actors={cfg.pipeline.num_actors}), "
                             f"got {args.actor_rank}")  # fmt: skip
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from dvla.chaos import run_chaos

    report = run_chaos(cfg, every_s=args.every, seed=args.seed, actor_at=args.actor_at, control_at=args.control_at,
                       actor_rank=args.actor_rank)  # fmt: skip
    print(report.table())
    print(f"details: {report.run_dir}/faults.csv, chaos.json, logs/")
    return 0 if report.survived else 1


def run_command(args: argparse.Namespace) -> int:
    if args.help_config:
        print("\n".join(describe()))
        return 0
    resume = None
    try:
        if args.resume:
            cfg, resume = resume_config(args)
        else:
            cfg = load_config(args.config, args.overrides, args.preset)
        if cfg.policy.path:  # fail now, not in every process after start-up
            from dvla.policy.vla import check_pretrained_dir

            try:
                check_pretrained_dir(cfg.policy.path)
            except ValueError as e:
                raise ValueError(f"config field 'policy.path': {e}") from None
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from dvla.launch import run

    return run(cfg, progress="lines" if args.no_progress or not sys.stderr.isatty() else "bar", resume=resume)


def resume_config(args: argparse.Namespace) -> tuple[RunConfig, Path]:
    """`dvla run --resume DIR`: (config, checkpoint folder), or ValueError saying what is wrong."""
    from dvla import checkpoint

    for flag in ("config", "preset"):
        if getattr(args, flag):
            raise ValueError(
                f"--resume takes the config from the checkpoint; drop --{flag} "
                f"(change fields with section.field=value overrides)"
            )
    info = checkpoint.inspect_checkpoint(args.resume)
    return checkpoint.resume_config(info, args.overrides), info.path


def admin(args: argparse.Namespace) -> int:
    from dvla.admin import as_json, format_checkpoint, format_rescale, format_status
    from dvla.rpc.client import ControlClient, RpcFailed

    try:
        cfg = load_config(args.config, args.overrides)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    address = args.control or f"{cfg.control.host}:{cfg.control.port}"
    client = ControlClient(address, cfg.control)
    try:
        client.wait_healthy(min(cfg.control.rpc_timeout_s, 10.0))
        if args.verb == "status":
            reply = client.status()
            print(as_json(reply) if args.json else format_status(reply))
        elif args.verb == "rescale":
            if not args.rollouts and not (args.worker and args.shards):
                print("error: rescale needs --rollouts N, or --worker ID with --shards K", file=sys.stderr)
                return 2
            reply = client.rescale(args.rollouts, args.worker, args.shards)
            print(as_json(reply) if args.json else format_rescale(reply))
        elif args.verb == "checkpoint":
            reply = client.checkpoint(wait=not args.no_wait, timeout_s=args.timeout)
            print(as_json(reply) if args.json else format_checkpoint(reply))
        else:
            state = client.pause() if args.verb == "pause" else client.resume()
            print(json.dumps({"state": state}) if args.json else f"run {state}")
    except RpcFailed as e:
        print(f"error: weight_control at {address}: {e.code}: {e.message}", file=sys.stderr)
        return 2
    finally:
        client.close()
    return 0


def dashed_overrides(argv: list[str]) -> list[str]:
    """Config fields flag-style, as section.field=value: '--policy.path DIR' -> 'policy.path=DIR'.

    A flag whose name holds a dot is a config field ('--help-config' and the
    other flags have none); it takes the next token as its value unless it
    carries '=value' itself.
    """
    out, i = [], 0
    while i < len(argv):
        tok = argv[i]
        name = tok.split("=", 1)[0]
        if not (tok.startswith("--") and "." in name):
            out.append(tok)
            i += 1
        elif "=" in tok:
            out.append(tok[2:])
            i += 1
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            out.append(f"{tok[2:]}={argv[i + 1]}")
            i += 2
        else:
            raise ValueError(f"config flag '{tok}' needs a value")
    return out


if __name__ == "__main__":
    sys.exit(main())
