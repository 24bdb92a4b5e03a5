"""The `dvla` command."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dvla.config import MODES, PRESETS, describe, load_config


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="dvla", description="Asynchronous RL for robot policies (D-VLA on ManiSkill3)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="train on this machine: weight_control, actor and rollouts as separate processes")
    r.add_argument("--config", help="YAML config file")
    r.add_argument("--preset", choices=sorted(PRESETS), help="named preset (default: pushcube)")
    r.add_argument("--no-progress", action="store_true", help="print a line per update instead of a progress bar")
    r.add_argument("--help-config", action="store_true", help="list every config field with its doc and exit")
    r.add_argument("overrides", nargs="*", help="section.field=value, e.g. algo.lr=1e-3 pipeline.num_updates=20")
    b = sub.add_parser("bench", help="every pipeline mode on the same budget: table, CSV and chart in runs/bench-<time>/")
    b.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {','.join(MODES)}")
    b.add_argument("--out-dir", default="runs", help="folder for the bench-<time> folder")
    b.add_argument("--no-publish-check", action="store_true", help="skip the publish-stall measurement")
    b.add_argument("--preset", choices=sorted(PRESETS), help="bench this preset's task and model (e.g. a VLA) "
                   "instead of the balanced MLP default")
    b.add_argument("overrides", nargs="*", help="section.field=value on top of the balanced default")
    try:
        argv = dashed_overrides(sys.argv[1:] if argv is None else list(argv))
    except ValueError as e:
        ap.error(str(e))
    args = ap.parse_args(argv)
    if args.cmd == "bench":
        from dvla.bench import run_bench
        try:
            run_bench([m for m in args.modes.split(",") if m], args.overrides, Path(args.out_dir),
                      publish_check=not args.no_publish_check, preset=args.preset)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        return 0
    if args.cmd == "run":
        if args.help_config:
            print("\n".join(describe()))
            return 0
        try:
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
        return run(cfg, progress="lines" if args.no_progress or not sys.stderr.isatty() else "bar")
    return 2


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
