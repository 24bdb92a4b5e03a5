"""The weight control plane's domain: the versioned weight store, the registry of workers and the run's state.

Pure: no network, no asyncio, no protobuf, and clocks are injected. services/weight_control wraps these
parts in gRPC servicers.
"""
