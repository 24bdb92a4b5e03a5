"""python -m services.rollout --control ADDR [--config FILE] [overrides]: one rollout worker."""

from __future__ import annotations

import os
import sys

from dvla import service_args
from dvla.membership import default_worker_id
from dvla.service_main import run_service


def main(argv: list[str] | None = None) -> int:
    p = service_args.parser("python -m services.rollout", __doc__)
    service_args.control_arg(p)
    p.add_argument(
        "--worker-id", default=os.environ.get("DVLA_WORKER_ID"), help="stable worker id (env DVLA_WORKER_ID)"
    )
    args = p.parse_args(argv)
    cfg = service_args.config_from(args)
    from .loop import run_rollout

    return run_service(
        "rollout",
        cfg.telemetry,
        lambda stop: run_rollout(
            cfg, service_args.control_address(args, cfg), args.worker_id or default_worker_id("rollout"), stop
        ),
    )


if __name__ == "__main__":
    sys.exit(main())
