"""The weight-receiving lane: keeps the inference copy at a version weight_control holds.

A version is fetched whole and checksum-verified before it is loaded, so the
policy never runs half-loaded weights; `current()` hands out the policy and its
version together.
"""
from __future__ import annotations

import threading

from dvla.policy import Policy
from dvla.rpc.client import ControlClient, VersionEvent


class WeightLane:
    def __init__(self, client: ControlClient, policy: Policy):
        self.client, self.policy = client, policy
        self.version = -1
        self.final = False
        self.fetches = 0
        self.versions_used: list[int] = []

    def current(self) -> tuple[Policy, int]:
        return self.policy, self.version

    def wait_for(self, min_version: int, stop: threading.Event) -> VersionEvent | None:
        """Block until weight_control holds a version >= min_version (or a final one); None if stopped."""
        ev = self.client.latest()
        if ev.version >= min_version or ev.final:
            return ev
        for ev in self.client.watch(after_version=ev.version, stop=stop):
            if ev.version >= min_version or ev.final:
                return ev
        return None

    def load_latest(self) -> int:
        """Fetch and load the newest version if it is newer than ours; returns the version in use."""
        ev = self.client.latest()
        if ev.version > self.version:
            version, final, tensors = self.client.fetch(None)
            self.policy.load_weights(tensors)
            self.version, self.final = version, final
            self.fetches += 1
        if not self.versions_used or self.versions_used[-1] != self.version:
            self.versions_used.append(self.version)
        return self.version
