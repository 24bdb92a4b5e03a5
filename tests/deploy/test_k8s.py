"""deploy/k8s: the objects each service needs and the wiring between them, read as plain YAML."""

from __future__ import annotations

import importlib.util
import shlex
from pathlib import Path

import pytest
import yaml

from dvla.config import ControlConfig, RunConfig, load_config

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
PORT = ControlConfig().port
BULK_PORT = 50552  # control.bulk_port in the manifests
SECRET_FILE = "secret.yaml"


def load(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@pytest.fixture(scope="module")
def objects() -> dict[tuple[str, str], dict]:
    """(kind, name) -> object, for every manifest in deploy/k8s."""
    kustomization = load(K8S / "kustomization.yaml")[0]
    manifests = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    # the token Secret is created by hand, so that `kubectl apply -k` never overwrites it
    assert sorted(kustomization["resources"] + [SECRET_FILE]) == manifests
    out = {}
    for name in manifests:
        for d in load(K8S / name):
            key = (d["kind"], d["metadata"]["name"])
            assert key not in out, f"{key} defined twice"
            out[key] = d
    return out


def container(workload: dict) -> dict:
    (c,) = workload["spec"]["template"]["spec"]["containers"]
    return c


def env(c: dict) -> dict[str, dict]:
    return {e["name"]: e for e in c.get("env", [])}


def run_config(objects: dict, workload: dict, tmp_path: Path) -> RunConfig:
    """The configuration the pod's process will load: its mounted run config, then DVLA_OVERRIDES."""
    spec = workload["spec"]["template"]["spec"]
    c = container(workload)
    e = env(c)
    config_path = e["DVLA_CONFIG"]["value"]
    mount = next(m for m in c["volumeMounts"] if config_path.startswith(m["mountPath"].rstrip("/") + "/"))
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    data = objects[("ConfigMap", volume["configMap"]["name"])]["data"]
    key = config_path[len(mount["mountPath"].rstrip("/")) + 1 :]
    local = tmp_path / workload["metadata"]["name"] / key
    local.parent.mkdir(parents=True, exist_ok=True)
    local.write_text(data[key])
    preset = e["DVLA_PRESET"]["value"] if "DVLA_PRESET" in e else None
    return load_config(str(local), shlex.split(e.get("DVLA_OVERRIDES", {}).get("value", "")), preset)


def workloads(objects: dict) -> dict[str, dict]:
    return {
        "weight_control": objects[("Deployment", "weight-control")],
        "actor": objects[("StatefulSet", "actor")],
        "rollout": objects[("Deployment", "rollout")],
    }


def test_kinds(objects):
    assert set(objects) == {
        ("ConfigMap", "dvla-run"),
        ("Secret", "dvla-token"),
        ("Deployment", "weight-control"),
        ("Service", "weight-control"),
        ("StatefulSet", "actor"),
        ("Service", "actor"),
        ("Deployment", "rollout"),
    }


def test_each_pod_runs_its_service(objects):
    images = {i["name"] for i in load(K8S / "kustomization.yaml")[0]["images"]}
    for service, w in workloads(objects).items():
        c = container(w)
        assert env(c)["DVLA_SERVICE"]["value"] == service
        assert importlib.util.find_spec(f"services.{service}.__main__") is not None
        assert c["image"].partition(":")[0] in images, "kustomize can retag the image"
        assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"]


def test_services_select_their_pods_and_ports(objects):
    pods = {k: w["spec"]["template"] for k, w in objects.items() if k[0] in ("Deployment", "StatefulSet")}
    for (kind, name), svc in objects.items():
        if kind != "Service":
            continue
        selector = svc["spec"]["selector"]
        matched = [t for t in pods.values() if selector.items() <= t["metadata"]["labels"].items()]
        assert len(matched) == 1, f"Service {name} selects {len(matched)} pod templates"
        (c,) = matched[0]["spec"]["containers"]
        by_name = {p["name"]: p["containerPort"] for p in c["ports"]}
        for p in svc["spec"]["ports"]:
            target = p.get("targetPort", p["port"])
            assert by_name.get(target, target) == p["port"], f"Service {name} port {p['port']}"
    for (kind, name), w in objects.items():
        if kind in ("Deployment", "StatefulSet"):
            labels = w["spec"]["template"]["metadata"]["labels"]
            assert w["spec"]["selector"]["matchLabels"].items() <= labels.items(), f"{kind} {name}"


def test_weight_control_port_and_probes(objects):
    c = container(objects[("Deployment", "weight-control")])
    assert [p["containerPort"] for p in c["ports"]] == [PORT, BULK_PORT]
    assert [p["port"] for p in objects[("Service", "weight-control")]["spec"]["ports"]] == [PORT, BULK_PORT]
    e = env(c)
    assert f"control.bulk_port={BULK_PORT}" in e["DVLA_OVERRIDES"]["value"].split()
    assert (e["DVLA_CONTROL_HOST"]["value"], e["DVLA_CONTROL_PORT"]["value"]) == ("0.0.0.0", str(PORT))
    assert c["readinessProbe"]["grpc"]["port"] == PORT and c["livenessProbe"]["grpc"]["port"] == PORT


def test_workers_reach_weight_control_through_its_service(objects):
    address = f"weight-control:{PORT}"
    assert ("Service", "weight-control") in objects
    for name in ("actor", "rollout"):
        w = workloads(objects)[name]
        c = container(w)
        assert env(c)["DVLA_CONTROL"]["value"] == address
        probe = c["readinessProbe"]["exec"]["command"]
        assert probe[:3] == ["python", "-m", "dvla.rpc.probe"] and probe[3] == address
        inits = {i["name"]: i for i in w["spec"]["template"]["spec"]["initContainers"]}
        assert f"dvla.rpc.probe {address}" in " ".join(inits["wait-for-control"]["command"])


def test_rollouts_on_a_node_share_its_weight_copies(objects):
    """control.node_cache: every rollout pod on a node mounts the same host folder, made writable first."""
    spec = workloads(objects)["rollout"]["spec"]["template"]["spec"]
    (vol,) = [v for v in spec["volumes"] if v["name"] == "node-weights"]
    assert vol["hostPath"]["path"] == "/dev/shm/dvla-weights"
    mounts = {m["name"]: m["mountPath"] for m in container(workloads(objects)["rollout"])["volumeMounts"]}
    assert mounts["node-weights"] == "/dev/shm/dvla-weights"  # where control.node_cache=auto looks
    init = {i["name"]: i for i in spec["initContainers"]}["node-weights"]
    assert "chmod 1777 /dev/shm/dvla-weights" in " ".join(init["command"])


def test_token_comes_from_the_secret(objects):
    (secret,) = load(K8S / SECRET_FILE)
    assert objects[("Secret", "dvla-token")] == secret
    keys = set(secret.get("stringData", {})) | set(secret.get("data", {}))
    for name in ("weight_control", "actor"):
        ref = env(container(workloads(objects)[name]))["DVLA_TOKEN"]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == "dvla-token" and ref["key"] in keys
    assert "DVLA_TOKEN" not in env(container(workloads(objects)["rollout"]))


def test_actor_rendezvous_is_a_stable_dns_name(objects, tmp_path):
    sts = objects[("StatefulSet", "actor")]
    svc = objects[("Service", sts["spec"]["serviceName"])]
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    dataplane = run_config(objects, sts, tmp_path).dataplane
    assert dataplane.host == f"{sts['metadata']['name']}-0.{svc['metadata']['name']}"
    assert [p["containerPort"] for p in container(sts)["ports"]] == [dataplane.port]
    assert [p["port"] for p in svc["spec"]["ports"]] == [dataplane.port]
    assert sts["spec"]["replicas"] == 1
    mounts = {m["name"]: m["mountPath"] for m in container(sts)["volumeMounts"]}
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert mounts[claim["metadata"]["name"]] == run_config(objects, sts, tmp_path).out_dir


def test_rollout_replicas_are_the_configured_worker_count(objects, tmp_path):
    replicas = objects[("Deployment", "rollout")]["spec"]["replicas"]
    assert replicas == 2
    for name, w in workloads(objects).items():
        assert run_config(objects, w, tmp_path).pipeline.num_rollout_workers == replicas, name


def test_gpu_overlay_patches_paths_that_exist(objects):
    """The base stays CPU-only; the gpu overlay adds nvidia.com/gpu where its JSON patches point."""
    for w in workloads(objects).values():
        assert "nvidia.com/gpu" not in yaml.safe_dump(w)
    overlay = load(K8S / "gpu" / "kustomization.yaml")[0]
    assert overlay["resources"] == [".."]
    patched = set()
    for p in overlay["patches"]:
        target = objects[(p["target"]["kind"], p["target"]["name"])]
        for op in yaml.safe_load(p["patch"]):
            *parents, leaf = [s.replace("~1", "/").replace("~0", "~") for s in op["path"].split("/")[1:]]
            node = target
            for s in parents:
                node = node[int(s)] if isinstance(node, list) else node[s]
            assert op["op"] == "add" and isinstance(node, dict) and leaf == "nvidia.com/gpu" and op["value"] == 1
        patched.add(target["metadata"]["name"])
    assert patched == {"actor", "rollout"}


def test_a_restarted_actor_pod_continues_from_its_checkpoint_as_the_same_actor(objects):
    actor = workloads(objects)["actor"]
    e = env(container(actor))
    # the same worker id: weight_control takes the new process as the actor's next incarnation
    assert e["DVLA_WORKER_ID"]["value"] == "actor-0" and e["DVLA_RESUME"]["value"] == "auto"
    assert actor["spec"]["template"]["spec"].get("restartPolicy", "Always") == "Always"
    assert actor["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "runs"  # checkpoints outlive the pod
