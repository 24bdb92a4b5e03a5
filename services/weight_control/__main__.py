"""python -m services.weight_control [--config FILE] [overrides]: the weight control plane."""

from __future__ import annotations

import asyncio
import logging
import os
import sys

from dvla import service_args


def main(argv: list[str] | None = None) -> int:
    p = service_args.parser("python -m services.weight_control", __doc__)
    p.add_argument("--host", default=os.environ.get("DVLA_CONTROL_HOST"), help="listen address (env DVLA_CONTROL_HOST)")
    p.add_argument(
        "--port", type=int, default=os.environ.get("DVLA_CONTROL_PORT"), help="listen port (env DVLA_CONTROL_PORT)"
    )
    p.add_argument(
        "--state-path",
        default=os.environ.get("DVLA_CONTROL_STATE"),
        help="keep the ledger here, and read it back when started again (control.state_path; env DVLA_CONTROL_STATE)",
    )
    args = p.parse_args(argv)
    cfg = service_args.config_from(args)
    control = cfg.control
    if args.host or args.port is not None or args.state_path:
        from dataclasses import replace

        control = replace(
            control,
            host=args.host or control.host,
            port=int(args.port) if args.port is not None else control.port,
            state_path=args.state_path or control.state_path,
        )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from .app import serve_forever

    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # uvloop has no Windows build
        runner = asyncio.run
    try:
        p = cfg.pipeline
        runner(serve_forever(control, p.num_rollout_workers, telemetry_cfg=cfg.telemetry, num_actors=p.num_actors))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
