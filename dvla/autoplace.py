"""Load-aware placement: measure, choose, and keep choosing how a node's CPU cores are split. Pure: no I/O.

In the asynchronous modes rollouts and the actor run at the same time, so the split of the
node's cores between them sets the run's pace, and the best split depends on stage times
that nobody knows in advance: with a small MLP the actor trains ~20% of the time and the
rollouts (92% of it inside ManiSkill's env.step) want every core; with a large model the
actor wants cores of its own. The stage times also drift during a run (episodes get
shorter as the policy learns, contacts get costlier). So the placer does not predict: it
runs each candidate split for a window of updates, keeps the fastest (env steps trained
per second), and after `recheck` windows runs the best other one again, switching when
that is faster by `margin` (each check the chosen split survives doubles the wait for the
next, up to 8x: a steady run pays less and less for staying alert). A window whose first update
runs under `cut_below` (70%) of the best rate measured ends there: a split that slow shows in one
update, and a whole window of it costs more than the certainty is worth. Each decision carries
its reason and the rates it rests on.

`dvla run` with pipeline.placement=auto uses it on CPU in the asynchronous modes; it moves
processes between cores (affinity) while they run, so nothing restarts. On GPUs a process
cannot change its device while it runs: the placement there stays as planned.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class Decision:
    update: int  # the update after which it was taken
    placement: str  # a pipeline.placement value (dvla/placement.py)
    reason: str
    rates: dict[str, float] = field(default_factory=dict)  # env steps/s last measured per placement
    switch: bool = True  # False: a verdict that keeps the placement in force


def cpu_candidates(cores: int, num_actors: int) -> list[str]:
    """The splits worth trying on `cores` cores, in the order tried: everything shared ('colocated') first,
    then the actor ranks with a core each ('disaggregated'), a quarter and half of the cores.

    Colocated goes first because the scheduler keeps every core busy whatever the stage times, so a run
    too short to measure them all (or a bench of a few updates) starts on the split least likely to be
    far off (measured on 2 cores, the default preset: colocated 1.7x disaggregated)."""
    if cores < 2:
        return ["colocated"]
    planned = min(num_actors, cores - 1)  # what 'disaggregated' gives the actor ranks (dvla/placement.py)
    shares = sorted({a for a in (planned, cores // 4, cores // 2) if planned <= a <= cores - 1})
    return ["colocated"] + ["disaggregated" if a == planned else f"{cores - a}:{a}" for a in shares]


def describe(placement: str, cores: int, num_actors: int) -> str:
    """'colocated' -> 'every process on any of 2 cores'; a split -> 'actor 1 core, rollouts 1'."""
    if placement == "colocated":
        return f"every process on any of {cores} cores"
    if placement == "disaggregated":
        a = min(num_actors, cores - 1)
    else:
        r, x = (int(p) for p in placement.split(":"))
        a = min(max(1, round(cores * x / (r + x))), cores - 1)
    return f"actor{'s' * (num_actors > 1)} {a} core{'s' * (a > 1)}, rollouts {cores - a}"


class AutoPlacer:
    """Feed it every update's (env steps trained so far, wall seconds); it answers with a Decision when
    the placement is to change (or a verdict is due), else None."""

    def __init__(
        self,
        candidates: list[str],
        window_updates: int = 4,
        settle_updates: int = 1,
        warmup_updates: int = 2,
        recheck_windows: int = 8,
        margin: float = 0.05,
        cut_below: float = 0.7,
    ):
        """cut_below: a window ends after its first update when that update ran below this fraction of the
        best rate measured (a split twice as slow shows in one update; a window of them costs the run more
        than the certainty is worth: measured on 2 cores, 5 slow updates of 30 took swimlane from 1.05x to
        0.86x sync). 0: every window runs whole."""
        if not candidates:
            raise ValueError("AutoPlacer needs at least one candidate placement")
        if window_updates < 1 or settle_updates < 0 or warmup_updates < 0 or recheck_windows < 1:
            raise ValueError("AutoPlacer: windows must be >= 1 update, settle and warm-up >= 0")
        self.candidates = list(candidates)
        self.window, self.settle, self.warmup = window_updates, settle_updates, warmup_updates
        self.recheck, self.margin, self.cut_below = recheck_windows, margin, cut_below
        self.current = candidates[0]
        self.rates: dict[str, float] = {}  # the last window's env steps/s per placement
        self.decisions: list[Decision] = []
        self._todo = list(candidates)  # still to measure in this round (the current one first)
        self._best: str | None = None  # chosen; None while exploring
        self._mark: tuple[int, float, int] | None = None  # (update, wall_s, env_steps) where the window began
        self._skip = warmup_updates  # updates to let pass before the next window starts
        self._held = 0  # windows measured on the chosen placement since the last check
        self._hold = recheck_windows  # windows until the next check: doubles after each check it survives
        self._challenger: str | None = None
        self._measured = self.current  # the placement the last window measured

    def observe(self, update: int, wall_s: float, env_steps: int) -> Decision | None:
        if self._skip > 0:
            self._skip -= 1
            if self._skip == 0:
                self._mark = (update, wall_s, env_steps)
            return None
        if self._mark is None:
            self._mark = (update, wall_s, env_steps)
            return None
        u0, t0, s0 = self._mark
        rate = (env_steps - s0) / max(wall_s - t0, 1e-9)
        if update - u0 < self.window and not self._clearly_slower(rate):
            return None
        self.rates[self.current] = rate
        self._measured = self.current
        self._mark = (update, wall_s, env_steps)
        cut = update - u0 < self.window
        d = self._after_window(update)
        if d is not None and cut:  # say so: the rate rests on fewer updates than a window
            why = f"{self._measured} cut short after {update - u0} update(s), under {self.cut_below:.0%} of the best"
            d = self.decisions[-1] = replace(d, reason=f"{d.reason}; {why}")
        return d

    def _clearly_slower(self, rate: float) -> bool:
        """The window so far runs far below the best other placement measured: no need to finish it."""
        others = [r for c, r in self.rates.items() if c != self.current]
        return bool(others) and rate < self.cut_below * max(others)

    def restart_window(self) -> None:
        """Measure afresh from the next update (the actor was started again and repeats updates)."""
        self._mark, self._skip = None, self.settle

    # ------------------------------------------------------------ what a measured window leads to
    def _after_window(self, update: int) -> Decision | None:
        if self._best is None:  # exploring: the next candidate, or the verdict
            self._todo.remove(self.current)
            if self._todo:
                return self._switch(update, self._todo[0], f"measuring {self._todo[0]} next ({self._tried()})")
            best = max(self.rates, key=self.rates.get)
            self._best, self._held = best, 0
            why = f"chose {best}: the fastest of {self._tried()}"
            return self._switch(update, best, why) if best != self.current else self._verdict(update, why)
        if self._challenger is None:  # holding the best: time for a check?
            self._held += 1
            if self._held < self._hold or len(self.candidates) < 2:
                return None
            others = [c for c in self.candidates if c != self._best]
            self._challenger = max(others, key=lambda c: self.rates.get(c, float("inf")))
            return self._switch(
                update, self._challenger, f"checking {self._challenger} again: stage times drift as a run goes"
            )
        challenger, best, self._challenger, self._held = self._challenger, self._best, None, 0
        won = self.rates[challenger] > self.rates[best] * (1 + self.margin)
        if won:
            self._best, self._hold = challenger, self.recheck
            why = (f"chose {challenger}: now faster than {best} by more than {self.margin:.0%} "
                   f"({self._tried()})")  # fmt: skip
            return self._switch(update, challenger, why)
        self._hold = min(2 * self._hold, 8 * self.recheck)  # a steady run pays for fewer and fewer checks
        why = f"back to {best}: {challenger} is not faster by {self.margin:.0%} ({self._tried()})"
        return self._switch(update, best, why)

    def _tried(self) -> str:
        return ", ".join(f"{c} {self.rates[c]:.0f}" for c in self.candidates if c in self.rates) + " env steps/s"

    def _switch(self, update: int, placement: str, reason: str) -> Decision:
        self.current = placement
        self._skip = self.settle  # the window starts once the processes have moved
        if self.settle == 0:
            self._mark = None
        d = Decision(update, placement, reason, dict(self.rates))
        self.decisions.append(d)
        return d

    def _verdict(self, update: int, reason: str) -> Decision:
        d = Decision(update, self.current, reason, dict(self.rates), switch=False)
        self.decisions.append(d)
        return d
