"""Token and TLS on a real weight_control: refused calls change nothing; TLS and mutual TLS connect."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import replace

import pytest
import torch

from dvla.config import ControlConfig, RunConfig, load_config, to_yaml
from dvla.rpc.client import ControlClient, RpcFailed
from dvla.types import EnvSpec
from services.weight_control.app import BackgroundServer

BASE = replace(ControlConfig(), rpc_timeout_s=5.0, transfer_timeout_s=20.0)
SPEC = EnvSpec("PushCube-v1", 35, 4, (-1.0,) * 4, (1.0,) * 4, 50)
WEIGHTS = {"w": torch.arange(12, dtype=torch.float32).reshape(3, 4)}


@pytest.fixture(autouse=True)
def no_env_token(monkeypatch):
    monkeypatch.delenv("DVLA_TOKEN", raising=False)


def client(address: str, cfg: ControlConfig) -> ControlClient:
    c = ControlClient(address, cfg)
    c.wait_healthy(10)
    return c


def test_admin_and_publish_need_the_token_and_a_refused_publish_changes_nothing():
    server_cfg = replace(BASE, token="s3cret")
    with BackgroundServer(server_cfg) as srv:
        good = client(srv.address, server_cfg)
        none, wrong = client(srv.address, BASE), client(srv.address, replace(BASE, token="guess"))
        try:
            for c in (none, wrong):
                with pytest.raises(RpcFailed) as e:
                    c.status()
                assert e.value.code == "UNAUTHENTICATED" and "DVLA_TOKEN" in e.value.message
                with pytest.raises(RpcFailed) as e:
                    c.publish(0, WEIGHTS)
                assert e.value.code == "UNAUTHENTICATED"
            assert not good.status().has_version  # nothing was stored
            good.register("actor", "actor-0", rendezvous_address="127.0.0.1:1")
            good.publish(0, WEIGHTS)
            # reading weights and registering stay open: rollouts only read
            version, _, fetched = none.fetch(0)
            assert version == 0 and torch.equal(fetched["w"], WEIGHTS["w"])
            with pytest.raises(RpcFailed, match="PERMISSION_DENIED"):  # the token alone is not enough:
                wrong_id = client(srv.address, server_cfg)  # only the actor publishes
                wrong_id.publish(1, WEIGHTS, publisher_id="rollout-7")
            wrong_id.close()
            assert none.register("rollout", "r0", env_spec=SPEC).rank == 1
            assert good.status().latest_version == 0
        finally:
            for c in (good, none, wrong):
                c.close()


def test_the_environment_token_wins_over_the_config(monkeypatch):
    with BackgroundServer(replace(BASE, token="from-config")) as srv:
        monkeypatch.setenv("DVLA_TOKEN", "from-env")
        c = client(srv.address, replace(BASE, token="from-config"))  # the client also reads DVLA_TOKEN
        try:
            with pytest.raises(RpcFailed, match="UNAUTHENTICATED"):
                c.status()  # the server started before the variable was set: it holds 'from-config'
        finally:
            c.close()


def test_saved_configs_never_hold_the_token():
    text = to_yaml(replace(RunConfig(), control=replace(BASE, token="s3cret")))
    assert "s3cret" not in text and "<redacted>" in text


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA, a server certificate for localhost/127.0.0.1 and a client certificate, made with openssl."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    d = tmp_path_factory.mktemp("pki")

    def run(*args):
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "1",
        "-subj",
        "/CN=dvla-test-ca",
    )
    (d / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for name in ("server", "client"):
        run(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            f"/CN={name}",
        )
        run(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.pem",
            "-days",
            "1",
            "-extfile",
            "san.ext",
        )
    return d


def test_tls_connects_and_plaintext_clients_are_refused(pki):
    server_cfg = replace(BASE, tls_cert=str(pki / "server.pem"), tls_key=str(pki / "server.key"))
    with BackgroundServer(server_cfg) as srv:
        assert srv.state.bulk is None  # the bulk port is plain TCP: under TLS the bytes keep to gRPC
        tls = client(srv.address, replace(BASE, tls_ca=str(pki / "ca.pem")))
        try:
            tls.register("actor", "actor-0", rendezvous_address="127.0.0.1:1")
            tls.publish(0, WEIGHTS)
            assert torch.equal(tls.fetch(0)[2]["w"], WEIGHTS["w"])
        finally:
            tls.close()
        plain = ControlClient(srv.address, BASE)
        try:
            with pytest.raises(RpcFailed, match="UNAVAILABLE"):
                plain.wait_healthy(2)
        finally:
            plain.close()


def test_mutual_tls_requires_a_client_certificate(pki):
    server_cfg = replace(
        BASE,
        tls_cert=str(pki / "server.pem"),
        tls_key=str(pki / "server.key"),
        tls_ca=str(pki / "ca.pem"),
        tls_client_auth=True,
    )
    with BackgroundServer(server_cfg) as srv:
        with_cert = client(
            srv.address,
            replace(
                BASE,
                tls_ca=str(pki / "ca.pem"),
                tls_client_cert=str(pki / "client.pem"),
                tls_client_key=str(pki / "client.key"),
            ),
        )
        try:
            assert with_cert.status().uptime_s >= 0
        finally:
            with_cert.close()
        without = ControlClient(srv.address, replace(BASE, tls_ca=str(pki / "ca.pem")))
        try:
            with pytest.raises(RpcFailed, match="UNAVAILABLE"):
                without.wait_healthy(2)
        finally:
            without.close()


@pytest.mark.parametrize(
    "override,field",
    [
        ("control.tls_cert=/x.pem", "control.tls_cert"),
        ("control.tls_client_auth=true", "control.tls_client_auth"),
        ("control.tls_client_key=/k.pem", "control.tls_client_cert"),
    ],
)
def test_inconsistent_tls_settings_name_the_field(override, field):
    with pytest.raises(ValueError, match=f"'{field}'"):
        load_config(None, [override])


def test_missing_certificate_files_name_the_field(tmp_path):
    cfg = replace(BASE, tls_cert=str(tmp_path / "nope.pem"), tls_key=str(tmp_path / "nope.key"))
    with pytest.raises(RuntimeError, match="control.tls_key"):
        with BackgroundServer(cfg):
            pass
