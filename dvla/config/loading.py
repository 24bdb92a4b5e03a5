"""Building a RunConfig from a preset, a YAML file and overrides, and writing it back out.

Overrides are `section.field=value` pairs whose value is parsed as YAML; every value is coerced to its
field's type, or a ValueError names the field. `describe` lists every field with its docstring (the
`--help-config` text); `to_yaml` writes a config into a run folder, secrets redacted.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import logging
import textwrap
import typing
from dataclasses import fields, is_dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from dvla.config.presets import PRESETS
from dvla.config.sections import RunConfig

log = logging.getLogger("dvla.config")


def _field_docs(cls: type) -> dict[str, str]:
    """Docstrings written under dataclass fields (attribute docstrings)."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return {}
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for a, b in zip(body, body[1:]):
        if (
            isinstance(a, ast.AnnAssign)
            and isinstance(a.target, ast.Name)
            and isinstance(b, ast.Expr)
            and isinstance(b.value, ast.Constant)
            and isinstance(b.value.value, str)
        ):
            docs[a.target.id] = b.value.value
    return docs


def describe(cfg: Any = None, prefix: str = "") -> list[str]:
    """One line per leaf field: dotted name, value, docstring."""
    cfg = RunConfig() if cfg is None else cfg
    docs = _field_docs(type(cfg))
    lines = []
    for f in fields(cfg):
        v = getattr(cfg, f.name)
        if is_dataclass(v):
            lines += describe(v, f"{prefix}{f.name}.")
        else:
            lines.append(f"  {prefix}{f.name} = {v!r}\n      {docs.get(f.name, '')}")
    return lines


class _Loader(yaml.SafeLoader):
    """YAML 1.1 without its base-60 numbers: '3:1' stays the string it reads as (a rollout:actor ratio),
    not the integer 181."""


def _no_base60(construct):
    def f(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
        text = loader.construct_scalar(node)
        return text if ":" in text else construct(loader, node)

    return f


_Loader.add_constructor("tag:yaml.org,2002:int", _no_base60(yaml.SafeLoader.construct_yaml_int))
_Loader.add_constructor("tag:yaml.org,2002:float", _no_base60(yaml.SafeLoader.construct_yaml_float))


def _yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)


def _coerce(name: str, value: Any, tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"config field '{name}': expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ValueError(f"config field '{name}': expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads '5e-4' (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ValueError(f"config field '{name}': expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ValueError(f"config field '{name}': expected a string, got {value!r}")
    if origin is tuple:
        if isinstance(value, (int, float)):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"config field '{name}': expected a list, got {value!r}")
        (elem, _ellipsis) = typing.get_args(tp)
        return tuple(_coerce(name, v, elem) for v in value)
    raise AssertionError(f"unsupported config type {tp} for {name}")


def _moved(cfg: Any, updates: dict[str, Any], prefix: str) -> dict[str, Any]:
    """Flat keys a section has since moved into a nested one (its MOVED map), put where they live now."""
    moved = getattr(type(cfg), "MOVED", {})
    if not any(k in moved for k in updates):
        return updates
    out: dict[str, Any] = {}
    for key, value in updates.items():
        if key in moved:
            section = moved[key]
            log.warning("config field '%s%s' is now '%s%s.%s'; read it there", prefix, key, prefix, section, key)
            nested = out.setdefault(section, {})
            if not isinstance(nested, dict):
                raise ValueError(f"config field '{prefix}{section}' is a section; give it a mapping")
            nested.setdefault(key, value)  # the new spelling wins when both are given
        elif key in out and isinstance(out[key], dict) and isinstance(value, dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def _apply(cfg: Any, updates: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(type(cfg))
    known = {f.name for f in fields(cfg)}
    changes = {}
    updates = _moved(cfg, updates, prefix)
    for key, value in updates.items():
        name = f"{prefix}{key}"
        if key not in known:
            raise ValueError(f"config field '{name}' does not exist; known: {', '.join(sorted(known))}")
        current = getattr(cfg, key)
        if is_dataclass(current):
            if not isinstance(value, dict):
                raise ValueError(f"config field '{name}' is a section; give it a mapping")
            changes[key] = _apply(current, value, f"{name}.")
        else:
            changes[key] = _coerce(name, value, hints[key])
    return replace(cfg, **changes)


def parse_override(text: str) -> dict[str, Any]:
    """'algo.lr=1e-3' -> {'algo': {'lr': 0.001}} (value parsed as YAML)."""
    if "=" not in text:
        raise ValueError(f"override '{text}' is not of the form section.field=value")
    key, raw = text.split("=", 1)
    key = key.strip().lstrip("-")
    value = _yaml(raw) if raw.strip() else ""
    out: dict[str, Any] = {}
    node = out
    parts = key.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return out


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(path: str | Path | None = None, overrides: list[str] = (), preset: str | None = None) -> RunConfig:
    """Preset (default 'pushcube'), then the YAML file, then `a.b=c` overrides; validated."""
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"unknown preset '{preset}'; available: {', '.join(PRESETS)}")
    cfg = PRESETS[preset or "pushcube"]()
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ValueError(f"config file '{p}' does not exist")
        data = _yaml(p.read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"config file '{p}' must hold a mapping at the top level")
        cfg = _apply(cfg, data)
    merged: dict = {}
    for o in overrides:
        merged = _merge(merged, parse_override(o))
    cfg = _apply(cfg, merged)
    return cfg.validate()


def to_dict(cfg: Any) -> dict:
    d = dataclasses.asdict(cfg)

    def lists(x):
        if isinstance(x, dict):
            return {k: lists(v) for k, v in x.items()}
        if isinstance(x, tuple):
            return [lists(v) for v in x]
        return x

    return lists(d)


def to_yaml(cfg: RunConfig) -> str:
    """The config as YAML, with secrets redacted (it is written into run folders)."""
    d = to_dict(cfg)
    if d["control"]["token"]:
        d["control"]["token"] = "<redacted>"
    return yaml.safe_dump(d, sort_keys=False)
