"""The run configuration's sections: one frozen dataclass per component, and RunConfig that holds them.

Each field's docstring (the string literal under it) is its help text: `dvla run --help-config` prints
it. Each section's `validate()` checks its own fields and raises ValueError naming the bad one;
`RunConfig.validate()` also checks the rules that span sections.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields, is_dataclass, replace

from dvla.config.check import check as _check
from dvla.config.policy import PolicyConfig
from dvla.config.runtime import ActorConfig, CheckpointConfig, ControlConfig, DataPlaneConfig, TelemetryConfig
from dvla.placement import check_mode as check_placement
from dvla.placement import shards_per_worker

_READS = {"state": "the state vector", "rgb": "camera images"}


@dataclass(frozen=True)
class EnvConfig:
    task: str = "PushCube-v1"
    """ManiSkill3 env id. Tested: PushCube-v1, PickCube-v1."""
    obs_mode: str = "state"
    """'state' (a flat state vector) or 'rgb' (a camera image plus the robot's state, for VLAs)."""
    image_size: int = 128
    """obs_mode 'rgb': camera width and height in pixels."""
    instruction: str = ""
    """The task in words for language-conditioned policies; empty = dvla's sentence for the task."""
    control_mode: str = "pd_joint_delta_pos"
    """ManiSkill3 controller. Joint deltas step ~3x faster on CPU than pd_ee_delta_pos (no IK), which learns a bit faster per step."""  # noqa: E501 (one line in --help-config)
    reward_mode: str = "normalized_dense"
    """ManiSkill3 reward mode: 'normalized_dense', 'dense' or 'sparse'."""
    max_episode_steps: int = 50
    """Steps before an episode is truncated."""
    sim_backend: str = "auto"
    """'auto' (physx_cuda with a GPU, else cpu), 'cpu' or 'physx_cuda'."""
    num_envs: int = 16
    """Env instances per rollout worker. With GRPO, a multiple of algo.group_size."""

    def validate(self) -> None:
        _check(self.obs_mode in ("state", "rgb"), "env.obs_mode", f"unknown '{self.obs_mode}'; use 'state' or 'rgb'")
        _check(16 <= self.image_size <= 1024, "env.image_size", "must be in [16, 1024] pixels")
        _check(
            self.reward_mode in ("normalized_dense", "dense", "sparse"),
            "env.reward_mode",
            f"unknown '{self.reward_mode}'",
        )
        _check(
            self.sim_backend in ("auto", "cpu", "physx_cuda", "gpu"), "env.sim_backend", f"unknown '{self.sim_backend}'"
        )
        _check(self.max_episode_steps > 0, "env.max_episode_steps", "must be > 0")
        _check(self.num_envs > 0, "env.num_envs", "must be > 0")


@dataclass(frozen=True)
class AlgoConfig:
    name: str = "ppo"
    """'ppo' (clipped surrogate + GAE value head) or 'grpo' (group-relative advantages)."""
    group_size: int = 4
    """GRPO: G episodes sharing one initial state (same reset seed) form a group."""
    gamma: float = 0.8
    """Discount factor (PPO/GAE)."""
    gae_lambda: float = 0.9
    """GAE lambda (PPO)."""
    clip_eps: float = 0.2
    """Clip range of the probability ratio."""
    lr: float = 3e-4
    """Adam learning rate."""
    update_epochs: int = 4
    """Passes over each global batch."""
    num_minibatches: int = 4
    """Minibatches per pass."""
    ent_coef: float = 0.0
    """Entropy bonus coefficient."""
    vf_coef: float = 0.5
    """Value loss coefficient (PPO)."""
    max_grad_norm: float = 0.5
    """Gradient norm clip."""
    normalize_advantages: bool = True
    """PPO: normalise advantages per minibatch."""
    max_behaviour_weight: float = 2.0
    """Decoupled loss: cap of the pi_prox / pi_behaviour weight on steps sampled by an older version."""
    bootstrap_on_termination: bool = True
    """PPO: bootstrap the value after a success termination too. ManiSkill ends episodes on success while the
    success state keeps paying the top reward; without this, hovering near the goal pays more than finishing
    (ManiSkill's PPO baseline defaults to bootstrap_at_done='always' for the same reason)."""

    def validate(self) -> None:
        _check(self.name in ("ppo", "grpo"), "algo.name", f"unknown '{self.name}'; choose 'ppo' or 'grpo'")
        _check(self.group_size >= 2 or self.name != "grpo", "algo.group_size", "GRPO needs groups of at least 2")
        _check(0.0 < self.gamma <= 1.0, "algo.gamma", "must be in (0, 1]")
        _check(0.0 <= self.gae_lambda <= 1.0, "algo.gae_lambda", "must be in [0, 1]")
        _check(self.clip_eps > 0, "algo.clip_eps", "must be > 0")
        _check(self.lr > 0, "algo.lr", "must be > 0")
        _check(self.update_epochs > 0, "algo.update_epochs", "must be > 0")
        _check(self.num_minibatches > 0, "algo.num_minibatches", "must be > 0")
        _check(self.max_behaviour_weight > 0, "algo.max_behaviour_weight", "must be > 0")


# Pipeline modes in order, each adding one strategy to the one before (PipelineConfig.mode describes them).
MODES = ("sync", "disaggregated", "train_async", "rollout_async", "streamer", "swimlane")


@dataclass(frozen=True)
class PipelineConfig:
    mode: str = "sync"
    """One of MODES, each adding one strategy to the one before: 'sync' (lockstep, colocated: RLinf's
    baseline), 'disaggregated' (lockstep, rollouts and actor on their own cores), 'train_async' (rollouts
    sample with weights up to max_staleness versions old while the actor trains), 'rollout_async' (env shards
    in their own processes, inference dynamically batched across them: RL-VLA3), 'streamer' (the actor
    backpropagates each rollout batch as it arrives and steps once per global batch), 'swimlane' (weights
    are published and fetched on their own threads, off the critical path: D-VLA)."""
    num_rollout_workers: int = 2
    """Rollout processes (each holds env.num_envs envs); CPU physics holds the GIL, so shards are processes."""
    num_actors: int = 1
    """K, actor processes training one policy as a group (actor.strategy); each trains on the rounds of its
    own rollouts (rollout r's home is actor r mod K), so num_rollout_workers >= K, ideally a multiple. A group
    backpropagates each global batch once it is in: the streamer strategy (per arriving batch) is one rank's."""
    max_staleness: int = 1
    """eta, for the asynchronous modes: a rollout epoch may start on weights at most this many versions
    behind the actor, and the actor drops (and counts) episodes older than that. Lockstep modes use 0."""
    num_updates: int = 220
    """Actor updates (policy versions published after v0) before the run ends."""
    slow_actor_s: float = 0.0
    """Testing: extra seconds the actor sleeps per update, to exercise staleness and backpressure."""
    slow_rollout_s: float = 0.0
    """Testing: extra seconds a rollout sleeps per env step, to exercise an actor that waits."""
    placement: str = "auto"
    """How `dvla run` shares the node's devices (GPUs, or CPU cores without one) between rollouts and actor
    ranks: 'colocated' (every process may use every device; on GPUs actor rank k on GPU k), 'disaggregated'
    (each actor rank a device of its own, rollouts the rest), a rollout:actor ratio such as '3:1' or '1:1',
    or 'auto': colocated for sync, disaggregated for the disaggregated mode; in the asynchronous modes on CPU,
    measured: each split of the cores runs a window of updates (colocated first; a window under 70% of the
    best after one update is cut there, and a split whose CPU bound is under it is not run), the fastest is
    kept, and the others are tried again as the run
    goes, moving processes between cores while they run (dvla/autoplace.py; decisions in placement.jsonl
    and placement.png, and in `dvla admin status`). On GPUs every process gets one device,
    never two actor ranks the same one (dvla/placement.py)."""
    auto_window_updates: int = 4
    """placement=auto: updates each measurement window of a placement lasts (after one update to settle)."""
    auto_recheck_windows: int = 8
    """placement=auto: windows on the chosen placement before the best other one is tried again (doubling
    after each check the chosen one survives, up to 8x)."""
    auto_cut_below: float = 0.7
    """placement=auto: a window under this fraction of the best rate is cut after one update, and a split
    whose most (from the CPU time each stage used: dvla/autoplace.py) is under it is not run. 0: every
    window runs whole and every split is measured."""
    rollout_restarts: int = 5
    """`dvla run`: times each rollout worker is started again after it dies (after 1 s; 2, 4 ... 30 s while it
    keeps dying within 30 s of starting); it rejoins at the next data-plane epoch. 0: a rollout that dies
    ends the run."""
    actor_restarts: int = 3
    """`dvla run`: times the actor (every rank of an actor group together) is started again after one dies,
    from the newest checkpoint of the run folder (checkpoint.every_updates); rollouts wait for it up to
    control.lost_after_s. 0: an actor that dies ends the run."""
    control_restarts: int = 3
    """`dvla run`: times weight_control is started again (on the same port) after it dies; the workers register
    with it again and the run goes on. 0: a weight_control that dies ends the run."""
    num_shards: int = 0
    """rollout_async and later: env shard processes per rollout worker (env.num_envs split evenly); 0 (auto):
    one per core of the worker's share of the node, at least one (dvla/placement.py: shards_per_worker).
    `dvla run` resolves it for the cores its rollouts share; a rollout started on its own, for its own."""
    max_batch: int = 0
    """rollout_async and later: B_max, observations per inference batch (0 = every env of the worker)."""
    batch_timeout_s: float = 0.002
    """rollout_async and later: T_max, the longest the oldest ready observation waits for a batch."""
    queue_batches: int = 8
    """Actor receive queue, in rollout batches. When full, the receive lane stops taking from the data
    plane, so rollouts block on send (backpressure): nothing is dropped for lack of room."""

    @property
    def stage(self) -> int:
        return MODES.index(self.mode)

    @property
    def lockstep(self) -> bool:
        return self.stage < MODES.index("train_async")

    @property
    def max_staleness_in_force(self) -> int:
        """max_staleness as the mode applies it: 0 in the lockstep modes."""
        return 0 if self.lockstep else self.max_staleness

    @property
    def sharded(self) -> bool:
        return self.stage >= MODES.index("rollout_async")

    @property
    def streamer(self) -> bool:
        return self.stage >= MODES.index("streamer")

    @property
    def background_weights(self) -> bool:
        return self.stage >= MODES.index("swimlane")

    @property
    def placement_in_force(self) -> str:
        """placement with 'auto' resolved by the mode."""
        if self.placement == "auto":
            return "disaggregated" if self.stage >= MODES.index("disaggregated") else "colocated"
        return self.placement

    @property
    def measured_placement(self) -> bool:
        """placement=auto in an asynchronous mode: `dvla run` measures the core splits on CPU (dvla/autoplace.py)."""
        return self.placement == "auto" and not self.lockstep

    @property
    def pinned(self) -> bool:
        """Rollouts and the actors on devices (cores) of their own."""
        return self.placement_in_force != "colocated"

    def validate(self) -> None:
        _check(self.mode in MODES, "pipeline.mode", f"unknown '{self.mode}'; choose from {', '.join(MODES)}")
        _check(self.num_rollout_workers > 0, "pipeline.num_rollout_workers", "must be > 0")
        _check(
            1 <= self.num_actors <= self.num_rollout_workers,
            "pipeline.num_actors",
            f"must be in [1, num_rollout_workers={self.num_rollout_workers}]: every actor rank needs a rollout",
        )

        _check(self.max_staleness >= 0, "pipeline.max_staleness", "must be >= 0")
        _check(
            self.lockstep or self.max_staleness >= 1,
            "pipeline.max_staleness",
            f"mode '{self.mode}' is asynchronous and needs max_staleness >= 1",
        )
        _check(self.num_updates > 0, "pipeline.num_updates", "must be > 0")
        _check(self.queue_batches > 0, "pipeline.queue_batches", "must be > 0")
        _check(self.num_shards >= 0, "pipeline.num_shards", "must be >= 0 (0: one per core of the worker's share)")
        bad = check_placement(self.placement)
        _check(bad is None, "pipeline.placement", f"{bad}; choose auto, colocated, disaggregated or R:A (e.g. 3:1)")
        _check(
            self.auto_window_updates >= 1 and self.auto_recheck_windows >= 1,
            "pipeline.auto_window_updates",
            "placement=auto windows must be >= 1 (auto_window_updates, auto_recheck_windows)",
        )
        _check(0 <= self.auto_cut_below < 1, "pipeline.auto_cut_below", "must be in [0, 1) (0: measure every split)")
        _check(self.max_batch >= 0, "pipeline.max_batch", "must be >= 0")
        _check(self.batch_timeout_s >= 0, "pipeline.batch_timeout_s", "must be >= 0")
        _check(self.slow_actor_s >= 0 and self.slow_rollout_s >= 0, "pipeline.slow_actor_s", "delays must be >= 0")
        _check(self.rollout_restarts >= 0, "pipeline.rollout_restarts", f"must be >= 0, got {self.rollout_restarts}")
        _check(self.actor_restarts >= 0, "pipeline.actor_restarts", f"must be >= 0, got {self.actor_restarts}")
        _check(self.control_restarts >= 0, "pipeline.control_restarts", f"must be >= 0, got {self.control_restarts}")


@dataclass(frozen=True)
class RunConfig:
    name: str = "default"
    """Run name; outputs go to <out_dir>/<name>/."""
    out_dir: str = "runs"
    """Folder holding run folders."""
    seed: int = 0
    """Seed for policy init, env resets and sampling."""
    device: str = "auto"
    """Torch device for actor and inference: 'auto' (cuda if present), 'cpu', 'cuda' or 'cuda:N'. `dvla run`
    gives each process its own GPU by pipeline.placement."""
    env: EnvConfig = field(default_factory=EnvConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    actor: ActorConfig = field(default_factory=ActorConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    dataplane: DataPlaneConfig = field(default_factory=DataPlaneConfig)
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    def with_shards_for(self, cores: int, workers: int) -> RunConfig:
        """pipeline.num_shards=0 (auto) resolved for `workers` rollouts sharing `cores` cores; as is otherwise."""
        if not self.pipeline.sharded or self.pipeline.num_shards:
            return self
        group = self.algo.group_size if self.algo.name == "grpo" else 1
        k = shards_per_worker(cores, workers, self.env.num_envs, group)
        return replace(self, pipeline=replace(self.pipeline, num_shards=k))

    def validate(self) -> RunConfig:
        _check(
            self.device in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", self.device) is not None,
            "device",
            f"unknown '{self.device}'; choose auto, cpu, cuda or cuda:N",
        )
        _check(bool(self.name) and "/" not in self.name, "name", "must be a non-empty folder name")
        for f in fields(self):
            v = getattr(self, f.name)
            if is_dataclass(v):
                v.validate()
        family = self.policy.family
        _check(
            self.env.obs_mode == family.obs_mode,
            "env.obs_mode",
            f"the {self.policy.name} policy reads {_READS[family.obs_mode]}; use env.obs_mode={family.obs_mode}"
            " (or choose the policy family that reads what the env gives: policy.name)",
        )
        shards = self.pipeline.num_shards if self.pipeline.sharded and self.pipeline.num_shards else 1
        _check(
            self.env.num_envs % shards == 0,
            "env.num_envs",
            f"{self.env.num_envs} does not split into pipeline.num_shards={shards} shards",
        )
        if self.algo.name == "grpo":
            per_shard = self.env.num_envs // shards
            _check(
                per_shard % self.algo.group_size == 0,
                "env.num_envs",
                f"{per_shard} envs per shard is not a multiple of algo.group_size={self.algo.group_size}",
            )
        return self
