"""deploy/compose.yaml as `docker-compose config` resolves it: services, wiring, health checks.

Needs the `docker-compose` binary (Debian's package; scripts/test.sh installs it) but no Docker engine.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from dvla.config import ControlConfig, RunConfig, load_config

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "deploy" / "compose.yaml"
DVLA_SERVICES = ("weight_control", "actor", "rollout")

pytestmark = pytest.mark.skipif(
    shutil.which("docker-compose") is None,
    reason="docker-compose not on PATH (scripts/test.sh installs Debian's docker-compose package)",
)


def compose_config(**env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DVLA_", "COMPOSE_"))}
    return subprocess.run(
        ["docker-compose", "-f", str(COMPOSE), "config"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**clean, **env},
    )


def resolved(**env: str) -> dict:
    r = compose_config(DVLA_TOKEN="test-token", **env)
    assert r.returncode == 0, r.stderr
    return yaml.safe_load(r.stdout)


@pytest.fixture(scope="module")
def project() -> dict:
    return resolved()


@pytest.fixture(scope="module")
def services(project) -> dict:
    return project["services"]


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def run_config(service: dict) -> RunConfig:
    """The configuration the service's process will load from its environment."""
    env = environment(service)
    return load_config(None, shlex.split(env.get("DVLA_OVERRIDES", "")), env.get("DVLA_PRESET"))


def test_the_three_services_run_the_dvla_image(services):
    assert set(DVLA_SERVICES) <= set(services)
    for name in DVLA_SERVICES:
        s = services[name]
        assert environment(s)["DVLA_SERVICE"] == name
        assert importlib.util.find_spec(f"services.{name}.__main__") is not None
        assert Path(s["build"]["context"]).resolve() == ROOT
        assert s["build"]["dockerfile"] == "deploy/Dockerfile"
        assert not s.get("profiles"), f"{name} must start without a profile"


def test_workers_find_weight_control_by_service_name(services):
    port = ControlConfig().port
    wc = environment(services["weight_control"])
    assert (wc["DVLA_CONTROL_HOST"], wc["DVLA_CONTROL_PORT"]) == ("0.0.0.0", str(port))
    for name in ("actor", "rollout"):
        host, _, p = environment(services[name])["DVLA_CONTROL"].rpartition(":")
        assert host == "weight_control" and host in services and int(p) == port


def test_healthcheck_probes_weight_control(services):
    test = services["weight_control"]["healthcheck"]["test"]
    assert test[:4] == ["CMD", "python", "-m", "dvla.rpc.probe"]
    assert test[4].rpartition(":")[2] == str(ControlConfig().port)
    for name in ("actor", "rollout"):
        depends_on = services[name]["depends_on"]
        assert list(depends_on) == ["weight_control"] and depends_on["weight_control"]["condition"] == "service_healthy"


def test_rollout_count_is_the_configured_worker_count(services):
    replicas = int(services["rollout"]["deploy"]["replicas"])
    assert replicas == 2
    for name in DVLA_SERVICES:
        assert run_config(services[name]).pipeline.num_rollout_workers == replicas, name


def test_rollout_count_follows_dvla_rollouts():
    services = resolved(DVLA_ROLLOUTS="3")["services"]
    assert int(services["rollout"]["deploy"]["replicas"]) == 3
    assert {run_config(services[n]).pipeline.num_rollout_workers for n in DVLA_SERVICES} == {3}


def test_actor_advertises_its_service_name(services):
    dataplane = run_config(services["actor"]).dataplane
    assert dataplane.host == "actor" and dataplane.host in services
    assert str(dataplane.port) in [str(p) for p in services["actor"]["expose"]]


def test_extra_overrides_reach_every_service():
    services = resolved(DVLA_EXTRA_OVERRIDES="telemetry.exporter=otlp telemetry.otlp_endpoint=jaeger:4317")["services"]
    for name in DVLA_SERVICES:
        t = run_config(services[name]).telemetry
        assert (t.exporter, t.otlp_endpoint.partition(":")[0]) == ("otlp", "jaeger")
    assert "jaeger" in services


def test_token_is_required_and_only_given_where_needed(services):
    for name in ("weight_control", "actor"):
        assert environment(services[name])["DVLA_TOKEN"] == "test-token"
    assert "DVLA_TOKEN" not in environment(services["rollout"])
    r = compose_config()
    assert r.returncode != 0 and "set DVLA_TOKEN" in r.stderr


def test_actor_run_folder_is_a_named_volume(project):
    mounts = project["services"]["actor"]["volumes"]
    mount = mounts[0] if isinstance(mounts[0], str) else f"{mounts[0]['source']}:{mounts[0]['target']}"
    source, target = mount.split(":")[:2]
    assert source in project["volumes"] and target == "/data/runs"
    workdir = re.findall(r"^WORKDIR\s+(\S+)", (ROOT / "deploy" / "Dockerfile").read_text(), re.M)[-1]
    assert Path(workdir, run_config(project["services"]["actor"]).out_dir) == Path(target), (
        "run folders land on the volume"
    )


def test_trace_viewer_is_behind_the_tracing_profile(services):
    jaeger = services["jaeger"]
    assert jaeger["profiles"] == ["tracing"]
    assert "jaegertracing/all-in-one" in jaeger["image"]
    assert environment(jaeger)["COLLECTOR_OTLP_ENABLED"] == "true"


def test_a_dead_service_is_started_again_and_the_actor_continues_from_its_checkpoint(services):
    for name in DVLA_SERVICES:
        assert services[name]["restart"] == "on-failure", name
    env = environment(services["actor"])
    assert env["DVLA_WORKER_ID"] == "actor-0" and env["DVLA_RESUME"] == "auto"
