#!/usr/bin/env bash
# Idempotent set-up of Sample Factory's own environment, beside (not inside) dvla's .venv:
# Sample Factory 2.1.1 pins gymnasium<1 and numpy<2, dvla runs on gymnasium 1.x and numpy 2.x,
# so the two cannot share one venv. Everything here is pinned, so two machines measure the same code.
# Safe to run again: each step checks before it acts. Vulkan (Mesa lavapipe, which SAPIEN needs even
# for state observations) is system-wide: scripts/setup.sh installs it, and this script runs that first
# when dvla's own venv is missing, since compare.py runs both systems.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
VENV=${SF_VENV:-$HERE/.venv}
PYTHON=${SF_PYTHON:-python3.11}
log() { printf '[sf-setup] %s\n' "$*" >&2; }

# The versions the comparison was written against (issue 13): keep them in step with README.md.
SF_VERSION=2.1.1
TORCH_VERSION=2.13.0      # dvla's venv runs the same torch: the policy math is not a variable
MANI_SKILL_VERSION=3.0.1  # as dvla's venv
SAPIEN_VERSION=3.0.3      # as dvla's venv
GYMNASIUM_VERSION=0.29.1  # Sample Factory: <1; ManiSkill 3.0.1: >=0.29.1
NUMPY_VERSION=1.26.4      # Sample Factory: <2 (the last 1.x release)

have_nvidia() { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }

if [ ! -x "$ROOT/.venv/bin/dvla" ]; then
  log "dvla's .venv is missing: running scripts/setup.sh first (it also installs the Vulkan driver)"
  bash "$ROOT/scripts/setup.sh"
fi

# pip's output minus this machine's notes about absent local indexes; pipefail keeps pip's status.
pip_install() { "$VENV/bin/python" -m pip install -q "$@" 2>&1 | { grep -v "is ignored: it is neither" || true; }; }

command -v "$PYTHON" >/dev/null || { log "$PYTHON not found (set SF_PYTHON to a Python 3.11 interpreter)"; exit 1; }
if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV with $PYTHON"
  "$PYTHON" -m venv "$VENV"
  pip_install --upgrade pip
fi
PY="$VENV/bin/python"

installed() { "$PY" -c "import importlib.metadata as m, sys; sys.exit(m.version('$1') != '$2')" 2>/dev/null; }

# torch first, as dvla's scripts/setup.sh does: a plain requirement would pull a multi-GB CUDA build;
# torch==2.13.0 resolves to the CPU wheel on a machine without CUDA (the local wheel cache holds it).
if ! installed torch "$TORCH_VERSION" && ! installed torch "$TORCH_VERSION+cpu"; then
  if have_nvidia; then
    log "installing torch==$TORCH_VERSION (CUDA build)"
  else
    log "installing torch==$TORCH_VERSION (CPU)"
  fi
  pip_install "torch==$TORCH_VERSION"
fi

# One resolve for the rest, with torch held where it is so pip never swaps it for another build.
stamp="$VENV/.sf-installed"
want="sample-factory==$SF_VERSION mani_skill==$MANI_SKILL_VERSION sapien==$SAPIEN_VERSION"
want="$want gymnasium==$GYMNASIUM_VERSION numpy==$NUMPY_VERSION"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  log "installing $want"
  torch_now=$("$PY" -c 'import importlib.metadata as m; print(m.version("torch"))')
  # shellcheck disable=SC2086  # $want is a list of requirements
  pip_install $want "torch==$torch_now"
  echo "$want" >"$stamp"
fi

# Check that the pins hold together: ManiSkill imports and steps PushCube under gymnasium<1 and numpy<2.
log "checking: ManiSkill's PushCube-v1 steps on the CPU backend in this venv"
"$PY" - <<'EOF'
import gymnasium as gym
import mani_skill.envs  # noqa: F401  (registers the tasks)
import numpy as np

assert np.__version__.startswith("1."), np.__version__
assert gym.__version__.startswith("0."), gym.__version__
env = gym.make("PushCube-v1", obs_mode="state", control_mode="pd_joint_delta_pos", reward_mode="normalized_dense",
               num_envs=1, sim_backend="physx_cpu", render_backend="none", max_episode_steps=50)
obs, _ = env.reset(seed=0)
obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
env.close()
print(f"[sf-setup] PushCube-v1 stepped: obs {tuple(obs.shape)}, reward {float(reward[0]):.3f}, "
      f"success {bool(info['success'][0])}")
EOF

log "installed in $VENV:"
"$PY" - <<'EOF'
import importlib.metadata as m
import platform

names = ("sample-factory", "torch", "mani_skill", "sapien", "gymnasium", "numpy", "signal-slot-mp")
print(f"[sf-setup]   python {platform.python_version()}")
for name in names:
    print(f"[sf-setup]   {name} {m.version(name)}")
EOF
log "ready: $VENV/bin/python (run: .venv/bin/python benchmarks/sample_factory/compare.py)"
