"""Hosts on one machine: weight_control, the actors and the rollouts each in its own network namespace.

    ns wc (10.77.x.1) --veth--+
    ns actor (10.77.x.2) -----+-- bridge in ns sw (no addresses of its own)
    ns rollout (10.77.x.3) ---+

and a group of two actor ranks fed by two rollouts, on five hosts (actor-1 .4, rollout-1 .5).

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
HOSTS = {"wc": 1, "actor": 2, "rollout": 3, "actor-1": 4, "rollout-1": 5}


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


@pytest.mark.parametrize("num_actors", [1, 2], ids=["one-actor", "two-actor-ranks"])
def test_a_run_across_network_namespaces(netns, tmp_path, num_actors):
    """One actor and one rollout; or two actor ranks (an FSDP group over gloo between their hosts) and two
    rollouts, each rollout homed to one rank."""
    names, subnet = netns
    hosts = ["wc", "actor", "rollout"] + (["actor-1", "rollout-1"] if num_actors == 2 else [])
    wc = f"{subnet}.1"
    common = ["--preset", "smoke", "pipeline.num_updates=3", "telemetry.exporter=none", "control.heartbeat_s=0.5",
              f"pipeline.num_actors={num_actors}", f"pipeline.num_rollout_workers={num_actors}"]  # fmt: skip
    env = dict(os.environ, GLOO_SOCKET_IFNAME="eth0", PYTHONUNBUFFERED="1")  # gloo: the namespace's own interface
    logs = {h: open(tmp_path / f"{h}.log", "w") for h in hosts}

    def start(host: str, *args: str) -> subprocess.Popen:
        return subprocess.Popen(
            ["ip", "netns", "exec", names[host], sys.executable, "-m", *args],
            cwd=ROOT,
            env=env,
            stdout=logs[host],
            stderr=subprocess.STDOUT,
        )

    def actor(host: str) -> subprocess.Popen:
        ip = f"{subnet}.{HOSTS[host]}"
        return start(host, "services.actor", "--control", f"{wc}:50551", "--run-dir", str(tmp_path / "run"),
                     "--worker-id", host, *common, f"dataplane.host={ip}", "dataplane.port=29511")  # fmt: skip

    procs = {"wc": start("wc", "services.weight_control", "--host", wc, "--port", "50551", *common)}
    for h in hosts[1:]:
        procs[h] = actor(h) if h.startswith("actor") else start(h, "services.rollout", "--control", f"{wc}:50551",
                                                                 "--worker-id", h, *common)  # fmt: skip
    try:
        rcs = {h: procs[h].wait(timeout=300) for h in hosts if h.startswith("actor")}
        rcs |= {h: procs[h].wait(timeout=60) for h in hosts if h.startswith("rollout")}
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
    text = "\n".join(f"--- {h}\n{(tmp_path / f'{h}.log').read_text()[-3000:]}" for h in hosts)
    assert set(rcs.values()) == {0}, text
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["version"] for r in rows] == [1, 2, 3], text
    logged = {h: (tmp_path / f"{h}.log").read_text() for h in hosts}
    if num_actors == 1:  # the rollout reached the actor at its namespace address, not through a shared loopback
        assert f"{subnet}.2" in logged["actor"] + logged["rollout"]
    else:  # both ranks trained every update, each on its own host; rank 1 beside rank 0's metrics
        assert [r["version"] for r in read_metrics(tmp_path / "run" / "actor-rank1" / "metrics.jsonl")] == [1, 2, 3]
        ranks = sorted(int(t.split("actor rank ")[1][0]) for h, t in logged.items() if h.startswith("actor"))
        assert ranks == [0, 1], text
