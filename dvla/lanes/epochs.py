"""The data-plane epoch lifecycle, written once: form a world, wait for the next, leave, re-form.

weight_control numbers the data-plane worlds by epoch. A worker forms the one it
is told of; while it waits at the rendezvous, a newer epoch (a rescale) cancels
it, and the worker looks for the one after. Between two epochs it leaves the old
group. The actor's first world, its receive lane and every rollout go through
the same steps, so they are here, over the Plane and Control ports.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from dvla.ports import ActorLost, Control, Plane
from dvla.types import World


class EpochCycle:
    """Moves one process from data-plane epoch to epoch.

    `give_up()` ends the cycle early (e.g. the run's final version is out); it and
    `stop` are polled while waiting, so nobody waits for a world that will not come.
    """

    def __init__(
        self,
        plane: Plane,
        control: Control,
        stop: threading.Event,
        give_up: Callable[[], bool] = lambda: False,
        poll_s: float = 0.05,
    ):
        self.plane, self.control, self.stop, self.give_up, self.poll_s = plane, control, stop, give_up, poll_s

    def halted(self) -> bool:
        return self.stop.is_set() or self.give_up()

    def moved_on(self, world: World) -> bool:
        """weight_control has announced an epoch after `world`'s: reach a safe point and re-form."""
        return self.control.directives.epoch > world.epoch

    def next_world(self, after_epoch: int, wait_s: float | None = None) -> World | None:
        """The next epoch this worker holds a rank in; None when it is out of the run or halted.
        ActorLost when none is announced within wait_s (None: wait as long as it takes)."""
        deadline = None if wait_s is None else time.monotonic() + wait_s
        while not self.halted():
            if deadline is not None and time.monotonic() > deadline:
                raise ActorLost(f"no new data-plane epoch after epoch {after_epoch} within {wait_s:g} s")
            d = self.control.directives
            if d.out_of_the_run:
                return None
            world = d.world()
            if world is not None and world.epoch > after_epoch:
                return world
            time.sleep(self.poll_s)
            self.control.beat()
        return None

    def enter(self, world: World | None) -> World | None:
        """Form `world`, or whichever epoch follows it when it is cancelled; None if none will form."""
        while world is not None:
            target = world
            # out of the run: e.g. the run finished while a late joiner waited for the others to arrive
            abort = lambda target=target: (  # noqa: E731
                self.halted() or self.moved_on(target) or self.control.directives.out_of_the_run
            )
            if self.plane.form(target, abort=abort):
                return target
            if self.halted():
                return None
            world = self.next_world(target.epoch)
        return None

    def advance(self, world: World, wait_s: float | None = None) -> World | None:
        """Leave `world` and form the next epoch this worker belongs to (None: it has none); ActorLost when
        none is announced within wait_s."""
        self.plane.leave()
        return self.enter(self.next_world(world.epoch, wait_s))
