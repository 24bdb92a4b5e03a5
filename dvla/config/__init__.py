"""Typed, frozen run configuration: one dataclass per component, presets as functions.

Every field has a docstring (the string literal under it); `dvla run --help-config`
prints them. Overrides come from a YAML file and from `section.field=value` pairs,
and every value is checked at start: a bad one raises ValueError naming the field.

    sections.py  the learning sections (env, algo, pipeline), MODES, and RunConfig over all
    policy.py    the policy section: what every family shares, and policy.mlp / policy.vla
    runtime.py   the machinery's sections (control, dataplane, telemetry, checkpoint)
    check.py     how a section reports a bad field
    presets.py   the preset functions and PRESETS, the table `--preset` chooses from
    loading.py   load_config (preset, then YAML, then overrides), describe, to_dict, to_yaml

Import from `dvla.config`; the submodules are how it is laid out, not part of its interface.
"""

from __future__ import annotations

from dvla.config.loading import describe, load_config, parse_override, to_dict, to_yaml
from dvla.config.policy import MlpConfig, VlaConfig
from dvla.config.presets import (
    PRESETS,
    preset_pickcube_vla_small,
    preset_pickcube_vla_tiny,
    preset_pushcube,
    preset_pushcube_grpo,
    preset_smoke,
)
from dvla.config.sections import (
    MODES,
    ActorConfig,
    AlgoConfig,
    CheckpointConfig,
    ControlConfig,
    DataPlaneConfig,
    EnvConfig,
    PipelineConfig,
    PolicyConfig,
    RunConfig,
    TelemetryConfig,
)

__all__ = [
    "MODES",
    "PRESETS",
    "ActorConfig",
    "AlgoConfig",
    "CheckpointConfig",
    "ControlConfig",
    "DataPlaneConfig",
    "EnvConfig",
    "PipelineConfig",
    "MlpConfig",
    "PolicyConfig",
    "VlaConfig",
    "RunConfig",
    "TelemetryConfig",
    "describe",
    "load_config",
    "parse_override",
    "to_dict",
    "to_yaml",
    "preset_pickcube_vla_small",
    "preset_pickcube_vla_tiny",
    "preset_pushcube",
    "preset_pushcube_grpo",
    "preset_smoke",
]
