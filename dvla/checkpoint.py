"""Actor checkpoints: weights (safetensors), optimizer state, counters, config, version.

A policy that can save itself in the transformers format (the VLAs) also goes
to `policy/` (config.json + model.safetensors), which `policy.path` loads.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from dvla.config import RunConfig, to_yaml


def save_checkpoint(directory: Path, weights: dict[str, torch.Tensor], optimizer_state: dict, version: int,
                    counters: dict, cfg: RunConfig, policy: torch.nn.Module | None = None) -> Path:
    """Write to a temporary folder and rename, so a crash never leaves half a checkpoint."""
    directory = Path(directory)
    tmp = directory.with_name(directory.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)  # left by a crash mid-write
    tmp.mkdir(parents=True)
    if policy is not None and hasattr(policy, "save_pretrained"):
        policy.save_pretrained(tmp / "policy")
    save_file(weights, str(tmp / "weights.safetensors"), metadata={"version": str(version)})
    torch.save(optimizer_state, tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps({"version": version, "counters": counters}, indent=2))
    (tmp / "config.yaml").write_text(to_yaml(cfg))
    if directory.exists():
        old = directory.with_name(directory.name + ".old")
        os.replace(directory, old)
        os.replace(tmp, directory)
        shutil.rmtree(old)
    else:
        os.replace(tmp, directory)
    return directory


def load_weights(directory: Path) -> tuple[dict[str, torch.Tensor], int]:
    directory = Path(directory)
    path = directory / "weights.safetensors"
    if not path.is_file():
        raise ValueError(f"checkpoint '{directory}' has no weights.safetensors")
    state = json.loads((directory / "state.json").read_text())
    return load_file(str(path)), int(state["version"])
