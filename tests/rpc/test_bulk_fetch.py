"""Fetching through a real weight_control: the bulk port, the gRPC fallback, the node cache, buffer reuse."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from dvla.rpc.client import ControlClient, RpcFailed, _Gone
from services.weight_control.app import BackgroundServer


def tensors(seed: int, n: int = 300_000) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(n, generator=g), "b": torch.randn(7, generator=g).to(torch.bfloat16)}


def same(a: dict, b: dict) -> bool:
    return list(a) == list(b) and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def cfg(control_cfg):
    return replace(control_cfg, node_cache="")


def serve(cfg, **kw):
    return BackgroundServer(replace(cfg, **kw), num_rollouts=2)


def actor_and_rollout(srv, cfg, rollout_cfg=None):
    actor = ControlClient(srv.address, cfg)
    actor.wait_healthy(10)
    actor.register("actor", "actor-0", rendezvous_address="127.0.0.1:29500")
    return actor, ControlClient(srv.address, rollout_cfg or cfg)


def test_bytes_travel_on_the_bulk_port_and_arrive_exactly(cfg, wait_for):
    with serve(cfg) as srv:
        actor, rollout = actor_and_rollout(srv, cfg)
        actor.publish(0, tensors(0))
        v, final, got = rollout.fetch(None)
        assert (v, final) == (0, False) and same(got, tensors(0))
        assert rollout.fetched == {"bulk": 1, "grpc": 0, "node": 0, "base": 0}
        nbytes = srv.state.run.store.latest.manifest.total_bytes
        wait_for(lambda: srv.state.bulk.bytes_sent == nbytes, 5)  # counted once sendall returns
        actor.close(), rollout.close()


def test_without_the_bulk_port_bytes_travel_over_grpc(cfg):
    with serve(cfg, bulk_port=-1) as srv:
        assert srv.state.bulk is None
        actor, rollout = actor_and_rollout(srv, cfg)
        actor.publish(0, tensors(0))
        assert same(rollout.fetch(0)[2], tensors(0))
        assert rollout.fetched == {"bulk": 0, "grpc": 1, "node": 0, "base": 0}
        actor.close(), rollout.close()


def test_an_unreachable_bulk_port_falls_back_to_grpc_and_says_so(cfg, caplog):
    with serve(cfg) as srv:
        srv.state.bulk.close()  # e.g. a firewall lets only the gRPC port through
        actor, rollout = actor_and_rollout(srv, cfg)
        actor.publish(0, tensors(0))
        actor.publish(1, tensors(1))
        assert same(rollout.fetch(0)[2], tensors(0))
        assert same(rollout.fetch(1)[2], tensors(1))
        assert rollout.fetched == {"bulk": 0, "grpc": 2, "node": 0, "base": 0}
        # said once per client (the actor publishing, the rollout fetching), not per transfer
        assert caplog.text.count("weight bytes go over gRPC") == 2
        actor.close(), rollout.close()


def test_a_version_dropped_between_header_and_bytes_is_fetched_anew(cfg):
    from dvla.proto.v1 import weights_pb2

    with serve(cfg, keep_versions=2) as srv:
        actor, rollout = actor_and_rollout(srv, cfg)
        actor.publish(0, tensors(0))
        ticket = rollout._ticket(weights_pb2.FetchRequest(latest=True))
        actor.publish(1, tensors(1))
        actor.publish(2, tensors(2))  # version 0 is gone now
        with pytest.raises(_Gone):
            rollout._fetch_ticket(ticket)
        v, _, got = rollout.fetch(None)  # the newest, then
        assert v == 2 and same(got, tensors(2))
        with pytest.raises(RpcFailed) as e:
            rollout.fetch(0)
        assert e.value.code == "NOT_FOUND"
        actor.close(), rollout.close()


def test_the_receive_buffer_is_reused_only_when_nothing_views_it(cfg):
    with serve(cfg) as srv:
        actor, rollout = actor_and_rollout(srv, cfg)
        actor.publish(0, tensors(0))
        actor.publish(1, tensors(1))
        held = rollout.fetch(0)[2]
        first = held["w"].data_ptr()
        newer = rollout.fetch(1)[2]
        assert same(held, tensors(0)), "a fetch overwrote tensors still in use"
        assert newer["w"].data_ptr() != first
        del held, newer
        again = rollout.fetch(0)[2]
        ptr = again["w"].data_ptr()
        del again
        assert rollout.fetch(1)[2]["w"].data_ptr() == ptr  # nothing viewed it: the same pages again
        actor.close(), rollout.close()


def test_rollouts_sharing_a_node_cache_fetch_each_version_once(cfg, tmp_path, wait_for):
    node_cfg = replace(cfg, node_cache=str(tmp_path))
    with serve(cfg) as srv:
        actor, first = actor_and_rollout(srv, cfg, node_cfg)
        second = ControlClient(srv.address, node_cfg)
        actor.publish(0, tensors(0))
        assert same(first.fetch(None)[2], tensors(0))
        first.node_cache.flush()
        assert same(second.fetch(None)[2], tensors(0))
        assert first.fetched == {"bulk": 1, "grpc": 0, "node": 0, "base": 0}
        assert second.fetched == {"bulk": 0, "grpc": 0, "node": 1, "base": 0}
        wait_for(lambda: srv.state.bulk.bytes_sent == srv.state.run.store.latest.manifest.total_bytes, 5)  # once
        first.close(), second.close()
        assert not any(tmp_path.iterdir()), "the node's copies outlived its rollouts"
        actor.close()


def test_partial_versions_travel_small_and_rollouts_complete_them_from_the_base(cfg):
    from dvla.lanes.publish import PublishLane

    names = {"w": torch.Size([300_000]), "b": torch.Size([7])}
    weights = {k: torch.zeros(s) for k, s in names.items()}
    with serve(cfg, keep_versions=2) as srv:
        actor, rollout = actor_and_rollout(srv, cfg)
        lane = PublishLane(actor, "actor-0", trained=frozenset({"b"}))  # "w" is frozen
        weights["w"] = torch.randn(300_000)
        for v in range(5):
            weights["b"] = torch.full((7,), float(v))
            lane.submit(v, dict(weights))
            got_v, _, got = rollout.fetch(None)
            assert got_v == v and same(got, weights)
        assert lane.bytes_sent[1] < lane.bytes_sent[0] / 1000  # 7 floats, not 300k
        assert rollout.fetched["base"] == 1  # the whole version once, kept for the partial ones
        status = {x.version: x for x in rollout.status().versions}
        assert list(status) == [0, 3, 4] and not status[0].partial
        assert status[4].partial and status[4].base_version == 0
        late = ControlClient(srv.address, cfg)  # joins after the base left the newest `keep`
        assert same(late.fetch(None)[2], weights) and late.fetched["base"] == 1
        actor.close(), rollout.close(), late.close()


def test_the_actor_publishes_over_the_bulk_port_and_weight_control_still_judges_every_version(cfg):
    from dvla.rpc import bulk
    from dvla.weights import pack

    with serve(cfg) as srv:
        actor, rollout = actor_and_rollout(srv, cfg)
        actor.publish(0, tensors(0))
        nbytes = srv.state.run.store.latest.manifest.total_bytes
        assert srv.state.bulk.bytes_received == nbytes  # the bytes came on the side channel
        assert same(rollout.fetch(0)[2], tensors(0))
        with pytest.raises(RpcFailed) as e:  # judged at OpenPublish, before any byte moves
            actor.publish(0, tensors(1))
        assert e.value.code == "ALREADY_EXISTS"
        manifest, buf = pack(tensors(1))
        bad = replace(manifest, sha256="0" * 64)  # bytes that are not what the manifest promises
        with pytest.raises(RpcFailed) as e:
            actor.publish_packed(1, bad, buf)
        assert e.value.code == "DATA_LOSS" and "does not match" in e.value.message
        assert srv.state.run.store.latest.version == 0  # nothing stored
        with pytest.raises(bulk.BulkError, match="unknown or expired publish ticket") as e:
            bulk.send("127.0.0.1", srv.state.bulk.port, b"x" * 16, buf)
        assert e.value.refused.startswith("PERMISSION_DENIED")
        actor.publish(1, tensors(1))
        assert same(rollout.fetch(None)[2], tensors(1))
        assert srv.state.bulk.bytes_received == 2 * nbytes
        actor.close(), rollout.close()
