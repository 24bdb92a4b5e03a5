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

It does bound, though, where the caller reports the CPU time each stage used (`cpu`): a window
measured at X env steps/s in which the rollouts kept U_r cores busy and the actor U_a tells
what one env step costs each, so a split giving them r and a cores runs at most
X * min(r / U_r, a / U_a). A candidate whose most is under `cut_below` of the best measured is
not run at all (on 2 cores with the default preset the rollouts use ~1.8 cores: a split that
leaves them one cannot reach 0.6x, and measuring it cost a short run 3% of its pace).

`dvla run` with pipeline.placement=auto uses it on CPU in the asynchronous modes; it moves
processes between cores (affinity) while they run, so nothing restarts. On GPUs a process
cannot change its device while it runs: the placement there stays as planned.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

Cpu = tuple[float, dict[str, float]]  # (seconds on a monotonic clock, CPU seconds each stage has used so far)


@dataclass(frozen=True)
class Decision:
    update: int  # the update after which it was taken
    placement: str  # a pipeline.placement value (dvla/placement.py)
    reason: str
    rates: dict[str, float] = field(default_factory=dict)  # env steps/s last measured per placement
    switch: bool = True  # False: a verdict that keeps the placement in force
    busy: dict[str, float] = field(default_factory=dict)  # cores each stage kept busy in the last window


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
    a = actor_cores(placement, cores, num_actors)
    if a is None:
        return f"every process on any of {cores} cores"
    return f"actor{'s' * (num_actors > 1)} {a} core{'s' * (a > 1)}, rollouts {cores - a}"


def actor_cores(placement: str, cores: int, num_actors: int) -> int | None:
    """The cores a split gives the actor ranks (the rollouts get the rest); None for colocated."""
    if placement == "colocated":
        return None
    if placement == "disaggregated":
        return min(num_actors, cores - 1)
    r, x = (int(p) for p in placement.split(":"))
    return min(max(1, round(cores * x / (r + x))), cores - 1)


def most_rate(placement: str, rate: float, busy: dict[str, float], cores: int, num_actors: int) -> float | None:
    """The fastest `placement` can run, from a window measured at `rate` env steps/s in which the stages kept
    busy['rollout'] and busy['actor'] cores busy (CPU seconds per second): each stage's CPU per env step
    stays what it was, and no stage gets more than its cores. None: nothing to bound it with."""
    u_r, u_a = busy.get("rollout", 0.0), busy.get("actor", 0.0)
    if rate <= 0 or u_r <= 0 or u_a <= 0:
        return None
    a = actor_cores(placement, cores, num_actors)
    if a is None:
        return rate * cores / (u_r + u_a)
    return rate * min((cores - a) / u_r, a / u_a)


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
        cores: int = 0,
        num_actors: int = 1,
    ):
        """cut_below: a window ends after its first update when that update ran below this fraction of the
        best rate measured (a split twice as slow shows in one update; a window of them costs the run more
        than the certainty is worth: measured on 2 cores, 5 slow updates of 30 took swimlane from 1.05x to
        0.86x sync), and a candidate whose most (most_rate) is below it is not run. 0: every window runs
        whole and every candidate is run.
        cores, num_actors: the node's cores and actor ranks, to bound splits with (0: no bounds)."""
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
        self.cores, self.num_actors = cores, num_actors
        self.busy: dict[str, float] = {}  # cores each stage kept busy in the last window measured
        self.most: dict[str, float] = {}  # the candidates not run: the most they could reach, env steps/s
        self._cpu_mark: Cpu | None = None  # the CPU snapshot where the window began (or the first in it)

    def observe(self, update: int, wall_s: float, env_steps: int, cpu: Cpu | None = None) -> Decision | None:
        """cpu: (seconds on the caller's monotonic clock, {stage: CPU seconds used so far}) for 'rollout' and
        'actor', if the caller measures them. Cores busy are taken between two snapshots on that clock, so
        a snapshot may come a little after its update (a caller that reads rows in batches)."""
        if self._skip > 0:
            self._skip -= 1
            if self._skip == 0:
                self._mark, self._cpu_mark = (update, wall_s, env_steps), cpu
            return None
        if self._mark is None:
            self._mark, self._cpu_mark = (update, wall_s, env_steps), cpu
            return None
        if self._cpu_mark is None:  # none where the window began: from the first one in it
            self._cpu_mark = cpu
        u0, t0, s0 = self._mark
        rate = (env_steps - s0) / max(wall_s - t0, 1e-9)
        if update - u0 < self.window and not self._clearly_slower(rate):
            return None
        self.rates[self.current] = rate
        self._measured = self.current
        self.busy = {}
        if cpu is not None and self._cpu_mark is not None and cpu[0] - self._cpu_mark[0] > 0:
            (t1, now), (t0_cpu, then) = cpu, self._cpu_mark
            used = {k: now[k] - then.get(k, 0.0) for k in now}
            if all(v >= 0 for v in used.values()):  # (a process that restarted counts from 0 again)
                self.busy = {k: v / (t1 - t0_cpu) for k, v in used.items()}
        self._mark, self._cpu_mark = (update, wall_s, env_steps), cpu
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
            self._todo = [c for c in self._todo if not self._out_of_reach(c)]
            if self._todo:
                return self._switch(update, self._todo[0], f"measuring {self._todo[0]} next ({self._tried()})")
            best = max(self.rates, key=self.rates.get)
            self._best, self._held = best, 0
            why = f"chose {best}: the fastest of {self._tried()}{self._unrun()}"
            return self._switch(update, best, why) if best != self.current else self._verdict(update, why)
        if self._challenger is None:  # holding the best: time for a check?
            self._held += 1
            if self._held < self._hold or len(self.candidates) < 2:
                return None
            others = [c for c in self.candidates if c != self._best and not self._out_of_reach(c)]
            if not others:  # none could win: the check is passed without a move
                self._held, self._hold = 0, min(2 * self._hold, 8 * self.recheck)
                return self._verdict(update, f"kept {self._best}: no other split can come near it{self._unrun()}")
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

    def _out_of_reach(self, candidate: str) -> bool:
        """The most `candidate` could run at, from the window just measured, is under cut_below of the best
        measured: not worth running (and remembered in self.most)."""
        self.most.pop(candidate, None)
        if not (self.cores and self.busy and self.rates and self.cut_below):
            return False
        most = most_rate(candidate, self.rates[self._measured], self.busy, self.cores, self.num_actors)
        if most is None or most >= self.cut_below * max(self.rates.values()):
            return False
        self.most[candidate] = most
        return True

    def _unrun(self) -> str:
        """'; not run: disaggregated (at most 290 env steps/s: rollouts kept 1.8 cores busy, the actor 0.2)'."""
        if not self.most:
            return ""
        busy = f"rollouts kept {self.busy.get('rollout', 0):.1f} cores busy, the actor {self.busy.get('actor', 0):.1f}"
        most = ", ".join(f"{c} (at most {m:.0f} env steps/s)" for c, m in self.most.items())
        return f"; not run: {most}, as in {self._measured} the {busy}"

    def _tried(self) -> str:
        return ", ".join(f"{c} {self.rates[c]:.0f}" for c in self.candidates if c in self.rates) + " env steps/s"

    def _switch(self, update: int, placement: str, reason: str) -> Decision:
        self.current = placement
        self._skip = self.settle  # the window starts once the processes have moved
        if self.settle == 0:
            self._mark = None
        d = Decision(update, placement, reason, dict(self.rates), busy=dict(self.busy))
        self.decisions.append(d)
        return d

    def _verdict(self, update: int, reason: str) -> Decision:
        d = Decision(update, self.current, reason, dict(self.rates), switch=False, busy=dict(self.busy))
        self.decisions.append(d)
        return d
