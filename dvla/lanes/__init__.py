"""The lanes of the actor and the rollout, each depending only on the ports (dvla/ports.py).

    actor    receive.py (data plane -> queue), training.py (queue -> new versions), publish.py (-> weights)
    rollout  weights.py (weights -> shadow copy, swap), sampling.py (env shards + inference -> data plane)
    both     epochs.py (form, leave and re-form the data plane by epoch)

services/*/loop.py wires them to real ports; dvla/inproc.py to in-memory ones.
"""
