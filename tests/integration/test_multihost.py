"""Three hosts on one machine: weight_control, an actor and a rollout each in its own network namespace.

    ns wc (10.77.x.1) --veth--+
    ns actor (10.77.x.2) -----+-- bridge in ns sw (no addresses of its own)
    ns rollout (10.77.x.3) ---+

Every address exists only inside its namespace, so gRPC (weights, registry) and
torch.distributed (gloo trajectories) cross real interfaces. Needs root and
`ip netns`; skips with the reason otherwise.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dvla.metrics import read_metrics

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
HOSTS = {"wc": 1, "actor": 2, "rollout": 3}


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(args, check=check, capture_output=True, text=True)


@pytest.fixture
def netns():
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    if shutil.which("ip") is None:
        pytest.skip("the 'ip' command (iproute2) is not installed")
    tag = f"dv{os.getpid() % 100000}"
    subnet = f"10.77.{os.getpid() % 250}"
    names = {h: f"{tag}-{h}" for h in [*HOSTS, "sw"]}
    made = []
    try:
        for ns in names.values():
            r = sh("ip", "netns", "add", ns, check=False)
            if r.returncode != 0:
                pytest.skip(f"cannot create network namespaces here: {r.stderr.strip()}")
            made.append(ns)
        sw = names["sw"]
        sh("ip", "netns", "exec", sw, "ip", "link", "add", "br0", "type", "bridge")
        sh("ip", "netns", "exec", sw, "ip", "link", "set", "br0", "up")
        for host, last in HOSTS.items():
            ns, peer = names[host], f"{tag}{last}"
            sh("ip", "link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", peer, "netns", sw)
            sh("ip", "netns", "exec", sw, "ip", "link", "set", peer, "master", "br0", "up")
            sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{subnet}.{last}/24", "dev", "eth0")
            sh("ip", "netns", "exec", ns, "ip", "link", "set", "eth0", "up")
            sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        yield names, subnet
    finally:
        for ns in made:
            sh("ip", "netns", "pids", ns, check=False)
            for pid in sh("ip", "netns", "pids", ns, check=False).stdout.split():
                sh("kill", "-9", pid, check=False)
            sh("ip", "netns", "del", ns, check=False)


def test_a_run_across_three_network_namespaces(netns, tmp_path):
    names, subnet = netns
    wc, actor_ip = f"{subnet}.1", f"{subnet}.2"
    common = ["--preset", "smoke", "pipeline.num_updates=3", "telemetry.exporter=none", "control.heartbeat_s=0.5"]
    env = dict(os.environ, GLOO_SOCKET_IFNAME="eth0", PYTHONUNBUFFERED="1")  # gloo: the namespace's own interface
    logs = {h: open(tmp_path / f"{h}.log", "w") for h in HOSTS}

    def start(host: str, *args: str) -> subprocess.Popen:
        return subprocess.Popen(
            ["ip", "netns", "exec", names[host], sys.executable, "-m", *args],
            cwd=ROOT,
            env=env,
            stdout=logs[host],
            stderr=subprocess.STDOUT,
        )

    procs = {
        "wc": start("wc", "services.weight_control", "--host", wc, "--port", "50551", *common),
        "actor": start(
            "actor",
            "services.actor",
            "--control",
            f"{wc}:50551",
            "--run-dir",
            str(tmp_path / "run"),
            *common,
            f"dataplane.host={actor_ip}",
            "dataplane.port=29511",
        ),
        "rollout": start("rollout", "services.rollout", "--control", f"{wc}:50551", *common),
    }
    try:
        rc = procs["actor"].wait(timeout=300)
        procs["rollout"].wait(timeout=60)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.terminate()
        for p in procs.values():
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
        for f in logs.values():
            f.close()
    text = "\n".join(f"--- {h}\n{(tmp_path / f'{h}.log').read_text()[-3000:]}" for h in HOSTS)
    assert rc == 0 and procs["rollout"].returncode == 0, text
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["version"] for r in rows] == [1, 2, 3], text
    # the rollout reached the actor at its namespace address, not through a shared loopback
    assert actor_ip in (tmp_path / "actor.log").read_text() + (tmp_path / "rollout.log").read_text()
