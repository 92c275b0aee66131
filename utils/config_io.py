"""Config overrides and validation: nested dataclasses updated from a JSON/Python file and ``--set key=value``.

Every key is checked against the dataclass fields and every value against the field's type and its declared
range (``Annotated[type, Check]``: ``at_least``, ``above``, ``between``, ``one_of``, ``non_empty``, ``each``;
floats are finite), so a typo, a wrong type or an out-of-range value stops the script with one line naming
the key and the rule, before anything is read or written.
"""
from __future__ import annotations

import dataclasses
import json
import math
import runpy
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from utils.atomic import atomic_write_text
from utils.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Check:
    """A range or shape a config value must have, declared beside its field: ``Annotated[float, above(0)]``."""

    condition: str  # completes "must be <noun> ...", e.g. "> 0"; the noun comes from the field's type
    ok: Callable[[Any], bool]
    each: bool = False  # the condition holds for every value of a list

    def message(self, key: str, tp: Any, value: Any) -> str:
        """The one-line error for ``value`` of key ``key`` (a field of type ``tp``)."""
        item = typing.get_args(tp)[0] if self.each else tp
        noun = {int: "an integer ", float: "a finite number "}.get(item, "")
        rule = f"{'each value ' if self.each else ''}must be {noun}{self.condition}"
        return f"config key '{key}': {rule}, got {value!r}"


def at_least(low: float) -> Check:
    """Values >= ``low``."""
    return Check(f">= {low}", lambda v: v >= low)


def above(low: float) -> Check:
    """Values > ``low``."""
    return Check(f"> {low}", lambda v: v > low)


def between(low: float, high: float, *, open_low: bool = False, open_high: bool = False) -> Check:
    """Values in the interval from ``low`` to ``high``, each end closed unless said open."""
    text = f"in {'(' if open_low else '['}{low}, {high}{')' if open_high else ']'}"
    return Check(text, lambda v: (low < v if open_low else low <= v) and (v < high if open_high else v <= high))


def one_of(*values: Any) -> Check:
    """One of ``values`` (for numbers; string choices are ``typing.Literal`` types)."""
    return Check(f"in {{{', '.join(map(str, values))}}}", lambda v: v in values)


def each(check: Check) -> Check:
    """``check`` on every value of a list."""
    return Check(check.condition, lambda v: all(check.ok(x) for x in v), each=True)


non_empty = Check("a list of at least one value", lambda v: len(v) > 0)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Return ``value`` converted to type ``tp``, or raise ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Annotated:
        value = _coerce(value, args[0], key)
        for check in args[1:]:
            if isinstance(check, Check) and not check.ok(value):
                raise ConfigError(check.message(key, args[0], value))
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, option, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"config key '{key}': {value!r} is not a valid {' or '.join(map(_type_name, args))}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"config key '{key}': {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin in (tuple, list):
        if isinstance(value, str):
            value = [v for v in value.replace(",", " ").split() if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}': expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"config key '{key}': expected {len(args)} values, got {len(value)}")
            return tuple(_coerce(v, a, key) for v, a in zip(value, args))
        item = args[0] if args else Any
        return origin(_coerce(v, item, key) for v in value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise ConfigError(f"config key '{key}': expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"config key '{key}': expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"config key '{key}': expected an integer, got {value!r}")
    if tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise ConfigError(f"config key '{key}': expected a number, got {value!r}")
        if not math.isfinite(number):
            raise ConfigError(f"config key '{key}': must be a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, (str, Path)):
            return str(value)
        raise ConfigError(f"config key '{key}': expected a string, got {value!r}")
    raise ConfigError(f"config key '{key}': unsupported field type {_type_name(tp)}")


def apply_overrides(config: Any, overrides: dict[str, Any], prefix: str = "") -> Any:
    """Return a copy of dataclass ``config`` with nested ``overrides`` applied and validated."""
    hints = typing.get_type_hints(type(config), include_extras=True)
    names = {f.name for f in dataclasses.fields(config)}
    changes = {}
    for name, value in overrides.items():
        key = f"{prefix}{name}"
        if name not in names:
            raise ConfigError(f"unknown config key '{key}' (valid keys here: {', '.join(sorted(names))})")
        current = getattr(config, name)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                example = next(iter(dataclasses.asdict(current)))
                raise ConfigError(f"config key '{key}' is a section; give its keys, e.g. '{key}.{example}'")
            changes[name] = apply_overrides(current, value, prefix=f"{key}.")
        else:
            changes[name] = _coerce(value, hints[name], key)
    updated = dataclasses.replace(config, **changes)
    validate = getattr(updated, "validate", None)
    if validate is not None:
        validate()
    return updated


def check_values(config: Any, prefix: str = "") -> None:
    """Check every field of dataclass ``config`` against its type and declared range, as loading would: for
    sections built in code rather than loaded (ConfigError naming the first bad key)."""
    hints = typing.get_type_hints(type(config), include_extras=True)
    for item in dataclasses.fields(config):
        _coerce(getattr(config, item.name), hints[item.name], f"{prefix}{item.name}")


def parse_set_options(items: list[str]) -> dict[str, Any]:
    """Turn ``["a.b=1", "c=x"]`` into the nested dict ``{"a": {"b": "1"}, "c": "x"}`` (typed later)."""
    nested: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects section.key=value, got {item!r}")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node = nested
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: '{part}' is set both as a value and as a section")
        node[parts[-1]] = value.strip()
    return nested


def read_override_file(path: str | Path) -> dict[str, Any]:
    """Read overrides from a JSON file or a Python file that defines a dict named ``CONFIG``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    if path.suffix == ".py":
        try:
            namespace = runpy.run_path(str(path))
        except Exception as exc:  # noqa: BLE001 - any error in user code becomes one line
            raise ConfigError(f"{path}: could not run config file ({type(exc).__name__}: {exc})") from None
        data = namespace.get("CONFIG")
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: a Python config file must define a dict named CONFIG")
        return data
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason}); save the config file as "
                          "UTF-8") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a JSON object of config sections")
    return data


def config_to_dict(config: Any) -> dict[str, Any]:
    """The resolved config as plain JSON-ready data (saved beside outputs and inside checkpoints)."""
    return dataclasses.asdict(config)


def save_config(config: Any, path: str | Path) -> None:
    """Write the resolved config as JSON, atomically."""
    atomic_write_text(path, json.dumps(config_to_dict(config), indent=2, sort_keys=True) + "\n")
