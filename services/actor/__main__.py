"""python -m services.actor --control ADDR [--run-dir DIR] [--resume CKPT] [--config FILE] [overrides]: the learner."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from dvla import service_args
from dvla.membership import default_worker_id
from dvla.service_main import run_service


def main(argv: list[str] | None = None) -> int:
    p = service_args.parser("python -m services.actor", __doc__)
    service_args.control_arg(p)
    p.add_argument(
        "--run-dir",
        default=os.environ.get("DVLA_RUN_DIR"),
        help="output folder (env DVLA_RUN_DIR; default <out_dir>/<name>)",
    )
    p.add_argument(
        "--worker-id", default=os.environ.get("DVLA_WORKER_ID"), help="stable worker id (env DVLA_WORKER_ID)"
    )
    p.add_argument(
        "--resume",
        default=os.environ.get("DVLA_RESUME") or None,
        help="continue from this checkpoint, or the newest one of this run folder; 'auto': from the newest one of "
        "--run-dir if it has one, else from the start (a supervisor restarting the actor: Kubernetes, compose) "
        "(env DVLA_RESUME)",
    )
    p.add_argument(
        "--busy-neighbours",
        type=int,
        default=int(os.environ.get("DVLA_BUSY_NEIGHBOURS", "0")),
        help="env-stepping processes that share this rank's CPU cores while it trains (dvla run sets it when "
        "colocated): its intra-op threads leave them their cores until it is moved onto cores of its own "
        "(env DVLA_BUSY_NEIGHBOURS; default 0)",
    )
    args = p.parse_args(argv)
    if args.busy_neighbours < 0:
        print(f"error: --busy-neighbours must be >= 0, got {args.busy_neighbours}", file=sys.stderr)
        return 2
    cfg = service_args.config_from(args)
    resume = None
    run_dir = Path(args.run_dir) if args.run_dir else Path(cfg.out_dir) / cfg.name
    if args.resume == "auto":
        from dvla.checkpoint import CHECKPOINTS, list_checkpoints

        found = list_checkpoints(run_dir / CHECKPOINTS)
        args.resume = str(found[-1]) if found else None
        what = f"continuing from {found[-1]}" if found else f"no checkpoint in {run_dir}: from the start"
        print(f"--resume auto: {what}", file=sys.stderr, flush=True)
    if args.resume:
        from dvla.checkpoint import check_can_continue, inspect_checkpoint

        try:  # one line and exit 2 before joining, like a bad config
            info = inspect_checkpoint(args.resume)
            check_can_continue(info, cfg.pipeline.num_updates)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        resume = info.path
    from .loop import run_actor

    return run_service(
        "actor",
        cfg.telemetry,
        lambda stop: run_actor(
            cfg,
            service_args.control_address(args, cfg),
            args.worker_id or default_worker_id("actor"),
            run_dir,
            stop,
            resume=resume,
            busy_neighbours=args.busy_neighbours,
        ),
    )


if __name__ == "__main__":
    sys.exit(main())
