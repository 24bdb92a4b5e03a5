"""Process shell shared by the actor and rollout services: logging and signals."""

from __future__ import annotations

import logging
import signal
import sys
import threading

import torch

from dvla.ports import ActorLost


def setup_logging(name: str) -> None:
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {name} %(levelname)s %(message)s")


def install_stop_signals(stop: threading.Event) -> None:
    """SIGTERM/SIGINT set `stop` (lanes wind down at a safe point) and interrupt the main thread."""

    def handler(signum, frame):
        first = not stop.is_set()
        stop.set()
        if first:
            raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


_failures: list[str] = []  # why this service gave up (give_up), if it did


def give_up(reason: str) -> None:
    """From any thread: stop this service as SIGTERM would, then exit with code 3 and `reason`."""
    _failures.append(reason)
    signal.raise_signal(signal.SIGTERM)


def resolve_device(name: str) -> torch.device:
    """'auto' is cuda when a GPU is visible, else cpu. A numbered CUDA device ('cuda:3', given by `dvla run`'s
    placement) becomes this process's current device, where NCCL and unnumbered tensors go."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)
    return device


def run_service(name: str, telemetry_cfg, body) -> int:
    """The shell of a worker process: logging, tracing, signals; body(stop) does the work.

    Returns the exit code: 0, 130 when stopped by SIGTERM/SIGINT, or 3 when it gave up (give_up: e.g.
    weight_control unreachable for control.lost_after_s; ActorLost: the actor gone as long).
    """
    from dvla import telemetry

    setup_logging(name)
    telemetry.setup(telemetry_cfg, name)
    stop = threading.Event()
    install_stop_signals(stop)
    try:
        body(stop)
    except ActorLost as e:  # waited for the actor to come back, as long as allowed
        logging.getLogger(f"dvla.{name}").error("%s", e)
        print(f"{name}: {e}", file=sys.stderr, flush=True)
        return 3
    except KeyboardInterrupt:
        if _failures:
            logging.getLogger(f"dvla.{name}").error("%s", _failures[0])
            print(f"{name}: {_failures[0]}", file=sys.stderr, flush=True)
            return 3
        return 130
    except BaseException:
        if not _failures:
            raise
        # gave up (give_up) while a lane failed for the same reason: say that, not the lane's traceback
        logging.getLogger(f"dvla.{name}").exception("%s", _failures[0])
        print(f"{name}: {_failures[0]}", file=sys.stderr, flush=True)
        return 3
    finally:
        telemetry.shutdown()
    return 3 if _failures else 0
