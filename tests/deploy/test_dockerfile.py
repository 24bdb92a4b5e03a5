"""deploy/Dockerfile without a Docker engine: static checks, and its RUN scripts run against fakes.

The scripts run under /bin/sh with `apt-get`, `pip` and `python3` replaced by recorders and /etc
paths moved to a temporary folder, so the CPU/CUDA branches are checked without building.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, argument) pairs, continuation lines joined and comment lines dropped, as Docker does."""
    out, buf = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#") or (not buf and not line.strip()):
            continue
        buf += line[:-1] if line.endswith("\\") else line
        if not line.endswith("\\"):
            word, _, rest = buf.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            buf = ""
    return out


def runs() -> list[str]:
    return [arg for word, arg in instructions() if word == "RUN"]


def args() -> dict[str, str]:
    return dict((a.split("=", 1) + [""])[:2] for w, a in instructions() if w == "ARG")


def test_base_and_device_are_build_arguments():
    assert args()["BASE"] and args()["DEVICE"] == "cpu"
    assert {"TORCH_SPEC", "TORCH_INDEX"} <= set(args())
    assert [a for w, a in instructions() if w == "FROM"] == ["${BASE}"]


def test_installs_the_project_with_pip():
    copied = [a.split()[:-1] for w, a in instructions() if w == "COPY"]
    assert {"pyproject.toml", "dvla", "services"} <= {src for srcs in copied for src in srcs}
    assert all((ROOT / src).exists() for srcs in copied for src in srcs)
    assert any("pip install -q /tmp/dvla-src" in r for r in runs())


def test_entrypoint_runs_a_service_module():
    (entry,) = [json.loads(a) for w, a in instructions() if w == "ENTRYPOINT"]
    assert entry[:2] == ["/bin/sh", "-c"] and 'exec python -m "services.${DVLA_SERVICE' in entry[2]
    r = subprocess.run(entry[:3] + ["dvla", "a.b=1"], capture_output=True, text=True, env={"PATH": os.environ["PATH"]})
    assert r.returncode != 0 and "set DVLA_SERVICE" in r.stderr


def image_references() -> list[str]:
    refs = [a for w, a in instructions() if w == "FROM"] + [args()["BASE"]]
    refs += re.findall(r"^\s*image:\s*(\S+)", (ROOT / "deploy" / "compose.yaml").read_text(), re.M)
    for p in (ROOT / "deploy" / "k8s").rglob("*.yaml"):
        refs += re.findall(r"^\s*image:\s*(\S+)", p.read_text(), re.M)
    return refs


def test_no_registry_host_is_written():
    assert not re.search(r"[a-z]+://", DOCKERFILE.read_text()), "a URL in the Dockerfile"
    assert not re.search(r"\b[\w-]+(\.[\w-]+)*\.(org|com|io|net|dev|cloud)\b", DOCKERFILE.read_text()), "a host name"
    refs = image_references()
    assert len(refs) >= 5
    for ref in refs:  # docker's rule: a first path component with '.' or ':' (or localhost) is a registry
        first = ref.split("/")[0]
        assert "/" not in ref or not ("." in first or ":" in first or first == "localhost"), ref


def test_run_scripts_parse():
    for script in runs():
        r = subprocess.run(["sh", "-n", "-c", script], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr


@pytest.fixture
def fake_root(tmp_path):
    """A folder standing in for /etc and /usr/share, and recorders for apt-get, pip and python3."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("apt-get", "pip", "python", "python3"):
        f = bin_dir / tool
        f.write_text(f'#!/bin/sh\necho "{tool} $*" >> "{tmp_path}/calls"\n')
        f.chmod(0o755)
    (tmp_path / "etc/apt/sources.list.d").mkdir(parents=True)
    (tmp_path / "usr/share").mkdir(parents=True)
    return tmp_path


def run_script(
    script: str, root: Path, os_release: str, **build_args: str
) -> tuple[subprocess.CompletedProcess, list[str]]:
    (root / "etc/os-release").write_text(os_release)
    script = script.replace("/etc/", f"{root}/etc/").replace("/usr/share/vulkan", f"{root}/usr/share/vulkan")
    env = {"PATH": f"{root}/bin:/usr/bin:/bin", "VIRTUAL_ENV": f"{root}/venv", **{**args(), **build_args}}
    r = subprocess.run(["sh", "-c", script], capture_output=True, text=True, env=env)
    calls = (root / "calls").read_text().splitlines() if (root / "calls").exists() else []
    return r, calls


DEBIAN = "ID=debian\nVERSION_CODENAME=bookworm\n"
DEBIAN_SOURCES = (
    "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n\n"
    "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n"
)


def system_script() -> str:
    return next(r for r in runs() if "apt-get" in r)


def torch_script() -> str:
    return next(r for r in runs() if "TORCH_SPEC" in r)


def test_cpu_image_gets_lavapipe_from_the_mirror_in_apt_sources(fake_root):
    (fake_root / "etc/apt/sources.list.d/debian.sources").write_text(DEBIAN_SOURCES)
    r, calls = run_script(system_script(), fake_root, DEBIAN)
    assert r.returncode == 0, r.stderr
    backports = (fake_root / "etc/apt/sources.list.d/dvla-backports.sources").read_text()
    assert "URIs: http://mirror.example/debian\n" in backports and "Suites: bookworm-backports\n" in backports
    assert any(
        c.startswith("apt-get install") and "-t bookworm-backports mesa-vulkan-drivers libvulkan1" in c for c in calls
    )


def test_cpu_image_refuses_a_non_debian_base(fake_root):
    r, _ = run_script(system_script(), fake_root, "ID=ubuntu\nVERSION_CODENAME=jammy\n")
    assert r.returncode != 0 and "Debian base" in r.stderr


def test_cuda_image_skips_lavapipe(fake_root):
    r, calls = run_script(system_script(), fake_root, "ID=ubuntu\nVERSION_CODENAME=jammy\n", DEVICE="cuda")
    assert r.returncode == 0, r.stderr
    assert not any("mesa-vulkan-drivers" in c or "backports" in c for c in calls)
    assert any(c.startswith("apt-get install") and "libvulkan1" in c for c in calls)
    icd = json.loads((fake_root / "usr/share/vulkan/icd.d/nvidia_icd.json").read_text())
    assert icd["ICD"]["library_path"].startswith("libGLX_nvidia")


@pytest.mark.parametrize(
    "build_args,expected",
    [
        ({}, "pip install -q torch==2.13.0"),
        ({"DEVICE": "cuda"}, "pip install -q torch"),
        ({"TORCH_INDEX": "file:///wheels"}, "pip install -q --index-url file:///wheels torch==2.13.0"),
        ({"DEVICE": "cuda", "TORCH_SPEC": "torch==2.9.1"}, "pip install -q torch==2.9.1"),
    ],
)
def test_torch_requirement(fake_root, build_args, expected):
    r, calls = run_script(torch_script(), fake_root, DEBIAN, **build_args)
    assert r.returncode == 0, r.stderr
    assert [c for c in calls if c.startswith("pip install")] == [expected]
