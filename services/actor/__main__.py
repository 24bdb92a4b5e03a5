"""python -m services.actor --control ADDR [--run-dir DIR] [--config FILE] [overrides]: the learner."""
from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

from dvla import service_args
from dvla.membership import default_worker_id
from dvla.service_main import install_stop_signals, setup_logging


def main(argv: list[str] | None = None) -> int:
    p = service_args.parser("python -m services.actor", __doc__)
    service_args.control_arg(p)
    p.add_argument("--run-dir", default=os.environ.get("DVLA_RUN_DIR"),
                   help="output folder (env DVLA_RUN_DIR; default <out_dir>/<name>)")
    p.add_argument("--worker-id", default=os.environ.get("DVLA_WORKER_ID"), help="stable worker id (env DVLA_WORKER_ID)")
    args = p.parse_args(argv)
    cfg = service_args.config_from(args)
    setup_logging("actor")
    from dvla import telemetry
    telemetry.setup(cfg.telemetry, "actor")
    stop = threading.Event()
    install_stop_signals(stop)
    from .loop import run_actor
    run_dir = Path(args.run_dir) if args.run_dir else Path(cfg.out_dir) / cfg.name
    try:
        run_actor(cfg, service_args.control_address(args, cfg), args.worker_id or default_worker_id("actor"), run_dir, stop)
    except KeyboardInterrupt:
        return 130
    finally:
        telemetry.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
