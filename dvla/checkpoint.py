"""Actor checkpoints: written atomically, the newest few kept, found and loaded to resume a run.

    <run folder>/checkpoints/v000012/     one folder per policy version (v{version:06d})
        weights.safetensors    the policy (metadata: version)
        optimizer.pt           the optimizer's state_dict (torch.save; loaded back with weights_only), or
        optimizer/             an actor group's: torch.distributed.checkpoint, one shard file per rank
        rng.safetensors        torch's global RNG (+ CUDA's) and the learner's shuffling generator
        state.json             version, updates, env steps trained, counters, wall time, request, resumed_from
        config.yaml            the run's config (token redacted)
        policy/                VLAs of one actor: config.json + model.safetensors, which `policy.path` loads

A checkpoint is written to a hidden temporary folder and renamed into place, so a
crash never leaves half of one, and older ones are deleted only after the new one
is complete. Every bad input to find/load/restore raises ValueError naming the
folder and what is wrong with it.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from dvla.config import RunConfig, load_config, parse_override, to_yaml

CHECKPOINTS = "checkpoints"  # the folder under a run folder
FORMAT = 1  # state.json 'format': bumped when the layout changes incompatibly
FILES = ("state.json", "weights.safetensors", "rng.safetensors", "config.yaml")
OPTIMIZER_FILE, OPTIMIZER_DIR = "optimizer.pt", "optimizer"  # one of them: one actor, or an actor group


class Trainable(Protocol):
    """What a checkpoint takes from the learner (services/actor/learner.py's Learner)."""

    optimizer: torch.optim.Optimizer
    generator: torch.Generator | None


def checkpoint_name(version: int) -> str:
    return f"v{version:06d}"


def config_text(cfg: RunConfig, resumed_from: str | Path = "") -> str:
    """A run's config.yaml (token redacted); a resumed run's opens with a comment saying from where."""
    header = f"# resumed from {resumed_from}\n" if resumed_from else ""
    return header + to_yaml(cfg)


# ---------------------------------------------------------------- writing
class Checkpointer:
    """The checkpoints of one run: when one is due, writing it, keeping the newest `keep`.

    Due every `every_updates` updates (0: never periodically) and whenever the
    Admin.Checkpoint request number grows past the last one written.
    """

    def __init__(
        self,
        root: Path,
        cfg: RunConfig,
        every_updates: int | None = None,
        keep: int | None = None,
        resumed_from: str = "",
    ):
        self.root, self.cfg, self.resumed_from = Path(root), cfg, resumed_from
        self.every_updates = cfg.checkpoint.every_updates if every_updates is None else every_updates
        self.keep = cfg.checkpoint.keep if keep is None else keep
        if self.every_updates < 0 or self.keep < 1:
            raise ValueError(
                f"checkpoints: every_updates must be >= 0 and keep >= 1 (got {self.every_updates}, {self.keep})"
            )
        self.last_version = -1  # newest checkpoint written (-1: none)
        self.last_path: Path | None = None
        self.request_done = 0  # newest Admin.Checkpoint request written
        self._last_updates = -1  # `updates` at the newest checkpoint

    def due(self, updates: int, request: int) -> bool:
        if request > self.request_done:
            return True
        return (
            self.every_updates > 0
            and updates > 0
            and updates % self.every_updates == 0
            and updates != self._last_updates
        )

    def save(
        self,
        version: int,
        policy: torch.nn.Module,
        learner: Trainable,
        *,
        updates: int,
        env_steps_trained: int,
        counters: dict | None = None,
        request: int = 0,
        wall_s: float = 0.0,
        final: bool = False,
        weights: dict[str, torch.Tensor] | None = None,
        write_optimizer: Callable[[Path], None] | None = None,
    ) -> Path:
        """Write checkpoint v{version} (replacing one of the same version), then prune; returns its folder.

        An actor group's rank 0 passes the whole policy's `weights` (gathered) and `write_optimizer`,
        which writes the sharded optimizer state into the folder it is given, with the other ranks."""
        path = self.root / checkpoint_name(version)
        tmp = self.staging(version)
        if tmp.exists():
            shutil.rmtree(tmp)  # left by a crash mid-write
        tmp.mkdir(parents=True)
        weights = policy.export_weights() if weights is None else weights
        save_file(weights, str(tmp / "weights.safetensors"), metadata={"version": str(version)})
        if write_optimizer is None:
            torch.save(learner.optimizer.state_dict(), tmp / OPTIMIZER_FILE)
        else:
            write_optimizer(tmp / OPTIMIZER_DIR)
        save_file(rng_states(learner.generator), str(tmp / "rng.safetensors"))
        if hasattr(policy, "save_pretrained"):  # from the gathered weights: an FSDP policy holds shards only
            policy.save_pretrained(tmp / "policy", weights=weights)
        state = {
            "format": FORMAT,
            "version": version,
            "updates": updates,
            "env_steps_trained": env_steps_trained,
            "counters": counters or {},
            "wall_s": wall_s,
            "request": max(request, self.request_done),
            "final": final,
            "resumed_from": self.resumed_from,
        }
        (tmp / "state.json").write_text(json.dumps(state, indent=2))
        (tmp / "config.yaml").write_text(config_text(self.cfg, self.resumed_from))
        _fsync_tree(tmp)  # the rename must not land before the data (power loss)
        _replace_dir(tmp, path)
        _fsync(self.root)
        self.mark_written(version, path, updates, request)
        self._prune()
        return path

    def staging(self, version: int) -> Path:
        """Where checkpoint v{version} is written before it is renamed into place."""
        return self.root / f".{checkpoint_name(version)}.tmp"

    def mark_written(self, version: int, path: Path, updates: int, request: int) -> None:
        """What save() remembers; an actor group's other ranks, which write only their optimizer shards
        (into staging()), call it too, so that they take the same decisions in due()."""
        self.last_version, self.last_path, self._last_updates = version, path, updates
        self.request_done = max(self.request_done, request)

    def _prune(self) -> None:
        """Older checkpoints past `keep`, and temporary folders left by a crash (this is the only writer)."""
        leftovers = [p for p in self.root.iterdir() if p.name.startswith(".v") and p.name.endswith((".tmp", ".old"))]
        for old in list_checkpoints(self.root)[: -self.keep] + leftovers:
            shutil.rmtree(old, ignore_errors=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for p in sorted(root.rglob("*"), key=lambda p: -len(p.parts)):  # files before their folders
        _fsync(p)
    _fsync(root)


def _replace_dir(src: Path, dst: Path) -> None:
    """Rename src to dst; an existing dst is moved aside first (os.replace needs an empty target)."""
    if not dst.exists():
        os.replace(src, dst)
        return
    aside = dst.with_name(f".{dst.name}.old")
    if aside.exists():
        shutil.rmtree(aside)
    os.replace(dst, aside)
    os.replace(src, dst)
    shutil.rmtree(aside)


def rng_states(generator: torch.Generator | None) -> dict[str, torch.Tensor]:
    """torch's global CPU RNG, each initialised CUDA device's, and the learner's generator (uint8 tensors)."""
    out = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out |= {f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())}
    if generator is not None:
        out["learner"] = generator.get_state()
    return out


# ---------------------------------------------------------------- finding and reading
def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoint folders under `root` (a run's checkpoints/), oldest version first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [
        p
        for p in root.iterdir()
        if p.is_dir() and p.name.startswith("v") and p.name[1:].isdigit() and (p / "state.json").is_file()
    ]
    return sorted(found, key=lambda p: int(p.name[1:]))


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder (it holds state.json), or the newest one of a run folder (under checkpoints/)."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"checkpoint '{path}' does not exist")
    if not path.is_dir():
        raise ValueError(f"checkpoint '{path}' is not a folder")
    if (path / "state.json").is_file():
        return path
    if (path / CHECKPOINTS).is_dir():
        found = list_checkpoints(path / CHECKPOINTS)
        if not found:
            raise ValueError(f"run folder '{path}' has no checkpoints in {CHECKPOINTS}/")
        return found[-1]
    raise ValueError(f"'{path}' is neither a checkpoint (no state.json) nor a run folder (no {CHECKPOINTS}/)")


@dataclass
class CheckpointInfo:
    """What a checkpoint says about itself, read without loading any tensor."""

    path: Path
    version: int
    updates: int
    env_steps_trained: int
    wall_s: float
    config_yaml: str  # the config of the run that wrote it (token '<redacted>' if it had one)
    state: dict  # state.json as written


@dataclass
class Checkpoint(CheckpointInfo):
    weights: dict[str, torch.Tensor] = field(default_factory=dict)
    optimizer_state: dict = field(default_factory=dict)  # empty when optimizer_dir holds it
    rng: dict[str, torch.Tensor] = field(default_factory=dict)  # see rng_states()
    optimizer_dir: Path | None = None  # an actor group's sharded optimizer state (torch.distributed.checkpoint)


def inspect_checkpoint(path: str | Path) -> CheckpointInfo:
    """Find a checkpoint (see find_checkpoint) and check its files and versions; loads no tensor."""
    path = find_checkpoint(path)
    for name in FILES:
        if not (path / name).is_file():
            raise ValueError(f"checkpoint '{path}' has no {name}")
    if not (path / OPTIMIZER_FILE).is_file() and not (path / OPTIMIZER_DIR / ".metadata").is_file():
        raise ValueError(f"checkpoint '{path}' has no {OPTIMIZER_FILE} (nor an actor group's {OPTIMIZER_DIR}/)")
    try:
        state = json.loads((path / "state.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"checkpoint '{path}': state.json is not valid JSON ({e})") from None
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint '{path}': state.json must hold an object")
    if state.get("format") != FORMAT:
        raise ValueError(
            f"checkpoint '{path}': state.json has format {state.get('format')!r}; this dvla reads {FORMAT}"
        )
    for key in ("version", "updates", "env_steps_trained"):
        if not isinstance(state.get(key), int) or isinstance(state.get(key), bool) or state[key] < 0:
            raise ValueError(
                f"checkpoint '{path}': state.json field '{key}' must be an integer >= 0, got {state.get(key)!r}"
            )
    try:
        with safe_open(str(path / "weights.safetensors"), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for a bad header
        raise ValueError(f"checkpoint '{path}': weights.safetensors is corrupt ({e})") from None
    if meta.get("version") != str(state["version"]):
        raise ValueError(
            f"checkpoint '{path}': state.json is version {state['version']} but weights.safetensors "
            f"is version {meta.get('version', 'unknown')}"
        )
    return CheckpointInfo(
        path,
        state["version"],
        state["updates"],
        state["env_steps_trained"],
        float(state.get("wall_s", 0.0)),
        (path / "config.yaml").read_text(),
        state,
    )


def load_checkpoint(path: str | Path) -> Checkpoint:
    """inspect_checkpoint, then the tensors: weights, optimizer state and RNG states (all on the CPU)."""
    info = inspect_checkpoint(path)
    p = info.path
    try:
        weights = load_file(str(p / "weights.safetensors"))
    except Exception as e:
        raise ValueError(f"checkpoint '{p}': weights.safetensors is corrupt ({e})") from None
    optimizer_state, optimizer_dir = {}, None
    if (p / OPTIMIZER_FILE).is_file():
        optimizer_state = _load_optimizer_file(p)
    else:
        optimizer_dir = p / OPTIMIZER_DIR
    try:
        rng = load_file(str(p / "rng.safetensors"))
    except Exception as e:
        raise ValueError(f"checkpoint '{p}': rng.safetensors is corrupt ({e})") from None
    if "torch" not in rng:
        raise ValueError(f"checkpoint '{p}': rng.safetensors has no 'torch' state")
    return Checkpoint(
        **info.__dict__, weights=weights, optimizer_state=optimizer_state, rng=rng, optimizer_dir=optimizer_dir
    )


def _load_optimizer_file(p: Path) -> dict:
    try:
        optimizer_state = torch.load(p / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling errors come in many types
        raise ValueError(f"checkpoint '{p}': optimizer.pt is corrupt ({e})") from None
    if not isinstance(optimizer_state, dict) or "state" not in optimizer_state or "param_groups" not in optimizer_state:
        raise ValueError(f"checkpoint '{p}': optimizer.pt does not hold an optimizer state_dict")
    return optimizer_state


# ---------------------------------------------------------------- resuming
REDACTED = "<redacted>"  # what dvla.config.to_yaml writes for a token


def resume_config(info: CheckpointInfo, overrides: list[str] = ()) -> RunConfig:
    """The checkpoint's config with `overrides` on top, ready for a run that continues it.

    A redacted token becomes '' (DVLA_TOKEN, or a control.token override, supplies the real one),
    and a VLA started from policy.path is rebuilt from the checkpoint's own policy/ copy, so the
    run does not depend on the original folder still being there.
    """
    cfg = load_config(info.path / "config.yaml", list(overrides))
    keys = {k for o in overrides for k in _dotted(parse_override(o))}
    if cfg.control.token == REDACTED:
        cfg = replace(cfg, control=replace(cfg.control, token=""))
    if cfg.policy.path and "policy.path" not in keys and (info.path / "policy" / "config.json").is_file():
        cfg = replace(cfg, policy=replace(cfg.policy, path=str((info.path / "policy").resolve())))
    check_can_continue(info, cfg.pipeline.num_updates)
    return cfg.validate()


def _dotted(tree: dict, prefix: str = "") -> list[str]:
    return [
        k
        for key, v in tree.items()
        for k in (_dotted(v, f"{prefix}{key}.") if isinstance(v, dict) else [f"{prefix}{key}"])
    ]


def check_can_continue(info: CheckpointInfo, num_updates: int) -> None:
    """A resumed run trains updates info.updates+1 .. num_updates: there must be at least one."""
    if num_updates <= info.updates:
        raise ValueError(
            f"checkpoint is at update {info.updates}; pipeline.num_updates={num_updates}: raise it to train further"
        )


def check_fits(ckpt_path: Path, weights: dict[str, torch.Tensor], policy: torch.nn.Module) -> None:
    """ValueError naming the first tensor whose name, shape or dtype differs from the policy's."""
    own = policy.state_dict()
    hint = "(was it written by a run with other policy.* or env settings?)"
    for name, mine in own.items():  # in the policy's order: the first mismatch is the outermost
        if name not in weights:
            raise ValueError(f"checkpoint '{ckpt_path}' does not fit the policy: it has no tensor '{name}' {hint}")
        w = weights[name]
        if w.shape != mine.shape:
            raise ValueError(
                f"checkpoint '{ckpt_path}' does not fit the policy: '{name}' has shape {tuple(w.shape)}, "
                f"the policy's {tuple(mine.shape)} {hint}"
            )
        if w.dtype != mine.dtype:
            raise ValueError(
                f"checkpoint '{ckpt_path}' does not fit the policy: '{name}' is {w.dtype}, the policy's "
                f"{mine.dtype} (policy.dtype or device differ?)"
            )
    for name in weights:
        if name not in own:
            raise ValueError(
                f"checkpoint '{ckpt_path}' does not fit the policy: the policy has no tensor '{name}' {hint}"
            )


def restore(ckpt: Checkpoint, policy: torch.nn.Module, learner: Trainable) -> None:
    """Load weights, optimizer state and RNG states into a freshly built policy and learner."""
    restore_weights(ckpt, policy)
    restore_training(ckpt, learner)


def restore_weights(ckpt: Checkpoint, policy: torch.nn.Module) -> None:
    """The weights alone: into the policy before an actor group wraps (and shards) it."""
    check_fits(ckpt.path, ckpt.weights, policy)
    policy.load_weights(ckpt.weights)


def restore_training(
    ckpt: Checkpoint,
    learner: Trainable,
    load_optimizer_dir: Callable[[Path], None] | None = None,
    load_optimizer_state: Callable[[dict], None] | None = None,
) -> None:
    """Optimizer and RNG states into a learner built over the restored policy. A checkpoint whose
    optimizer state is sharded (optimizer/) is read by `load_optimizer_dir` (the actor group's); one
    actor's optimizer.pt by `load_optimizer_state` where given (sharded parameters), else as it is."""
    try:
        if ckpt.optimizer_dir is None:
            (load_optimizer_state or learner.optimizer.load_state_dict)(ckpt.optimizer_state)
        elif load_optimizer_dir is None:
            raise ValueError("it is sharded (optimizer/); read it through an actor group")
        else:
            load_optimizer_dir(ckpt.optimizer_dir)
    except (ValueError, KeyError, RuntimeError) as e:
        raise ValueError(f"checkpoint '{ckpt.path}': the optimizer state does not fit the optimizer ({e})") from None
    torch.set_rng_state(ckpt.rng["torch"])
    cuda = [ckpt.rng[k] for k in sorted((k for k in ckpt.rng if k.startswith("cuda.")), key=lambda k: int(k[5:]))]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    if learner.generator is not None and "learner" in ckpt.rng:
        learner.generator.set_state(ckpt.rng["learner"])
