"""Data plane: trajectories from rollout workers to the actor over torch.distributed."""

from dvla.dataplane.transport import TrajectoryReceiver, TrajectorySender
from dvla.dataplane.wire import (
    KIND_END,
    KIND_EPOCH_END,
    KIND_TRAJECTORIES,
    WIRE_VERSION,
    Header,
    check_header,
    decode_payload,
    encode_batch,
)
from dvla.dataplane.world import DataPlane

__all__ = [
    "KIND_END",
    "KIND_EPOCH_END",
    "KIND_TRAJECTORIES",
    "WIRE_VERSION",
    "DataPlane",
    "Header",
    "TrajectoryReceiver",
    "TrajectorySender",
    "check_header",
    "decode_payload",
    "encode_batch",
]
