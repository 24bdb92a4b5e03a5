#!/usr/bin/env bash
# Idempotent set-up for a fresh machine: system packages (Vulkan for SAPIEN),
# a virtual environment in .venv, torch (CPU wheel when no CUDA GPU), and dvla.
# Safe to run again: each step checks before it acts.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${DVLA_VENV:-.venv}
log() { printf '[setup] %s\n' "$*" >&2; }

have_nvidia() { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# --- Vulkan: SAPIEN needs a Vulkan device even for state observations. ---------
# Without an NVIDIA GPU we use Mesa's lavapipe; bookworm's Mesa 22 is too old,
# bookworm-backports carries Mesa 25. The mirror is read from this machine's own
# apt sources so no host name lives in the repo.
mesa_major() { dpkg-query -W -f='${Version}' mesa-vulkan-drivers 2>/dev/null | sed -E 's/^([0-9]+).*/\1/'; }
ensure_lavapipe() {
  local major; major=$(mesa_major || true)
  if [ -n "$major" ] && [ "$major" -ge 24 ] && dpkg-query -W libvulkan1 >/dev/null 2>&1; then
    return 0
  fi
  command -v apt-get >/dev/null || { log "no apt-get: install Mesa >= 24 lavapipe (mesa-vulkan-drivers) by hand"; exit 1; }
  local src=/etc/apt/sources.list.d/dvla-backports.sources
  if [ ! -f "$src" ]; then
    local uri
    uri=$(grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' | grep -v security | head -n1 || true)
    [ -n "$uri" ] || uri=$(grep -hE '^deb ' /etc/apt/sources.list 2>/dev/null | awk '{print $2}' | grep -v security | head -n1 || true)
    [ -n "$uri" ] || { log "cannot find a Debian mirror in apt's sources"; exit 1; }
    log "adding bookworm-backports from $uri"
    printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$uri" | as_root tee "$src" >/dev/null
  fi
  log "installing Mesa lavapipe (mesa-vulkan-drivers) from bookworm-backports"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq -t bookworm-backports mesa-vulkan-drivers libvulkan1 >/dev/null
}
if have_nvidia; then
  log "NVIDIA GPU found: using its Vulkan driver"
else
  ensure_lavapipe
fi

# --- Python environment ---------------------------------------------------------
# pip's output minus this machine's notes about absent local indexes; pipefail keeps pip's status.
pip_install() { "$VENV/bin/python" -m pip install -q "$@" 2>&1 | { grep -v "is ignored: it is neither" || true; }; }
if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV"
  python3 -m venv "$VENV"
  pip_install --upgrade pip
fi
PY="$VENV/bin/python"
if ! "$PY" -c 'import torch' 2>/dev/null; then
  if have_nvidia; then
    log "installing torch (CUDA build)"; pip_install torch
  else
    # A plain `torch` requirement would pull a multi-GB CUDA build; 2.13.0 is a CPU wheel.
    log "installing torch==2.13.0 (CPU)"; pip_install torch==2.13.0
  fi
fi
stamp="$VENV/.dvla-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  log "installing dvla and its dependencies"
  pip_install -e '.[dev]'
  touch "$stamp"
fi
log "ready: $VENV"
