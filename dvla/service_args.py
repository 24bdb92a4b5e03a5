"""Command-line and environment configuration shared by the three services.

Each service takes `--config FILE`, `--preset NAME` and `section.field=value`
overrides; every flag also reads an environment variable (DVLA_CONFIG,
DVLA_PRESET, DVLA_OVERRIDES, DVLA_CONTROL ...) so containers can be configured
without a command line. Flags win over the environment.
"""

from __future__ import annotations

import argparse
import os
import shlex

from dvla.config import RunConfig, describe, load_config


def parser(prog: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--config", default=os.environ.get("DVLA_CONFIG"), help="YAML config file (env DVLA_CONFIG)")
    p.add_argument("--preset", default=os.environ.get("DVLA_PRESET"), help="named preset (env DVLA_PRESET)")
    p.add_argument("--help-config", action="store_true", help="list every config field with its doc and exit")
    p.add_argument("overrides", nargs="*", help="section.field=value (env DVLA_OVERRIDES, space separated)")
    return p


def config_from(args: argparse.Namespace) -> RunConfig:
    if args.help_config:
        print("\n".join(describe()))
        raise SystemExit(0)
    overrides = shlex.split(os.environ.get("DVLA_OVERRIDES", "")) + list(args.overrides)
    try:
        return load_config(args.config, overrides, args.preset)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None


def control_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--control",
        default=os.environ.get("DVLA_CONTROL"),
        help="weight_control address host:port (env DVLA_CONTROL; default from control.host/port)",
    )


def control_address(args: argparse.Namespace, cfg: RunConfig) -> str:
    return args.control or f"{cfg.control.host}:{cfg.control.port}"
