"""One strict loader for config tables: a TOML table -> a frozen dataclass, every key checked once.

Unknown keys are refused (naming the known ones), values are type-checked against the field's hint
(:func:`coerce`), and a ``__post_init__`` error is re-raised under its file and ``[table]`` heading.
The daemon's config (:mod:`edge.config`), the perception tables (``[source]``, ``[detector]``,
``[tracker]``) and the trainer's configs (:mod:`trainer.config`) all load through here.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any

from edge.errors import ConfigError, FeatherFaceError
from edge.redact import Secret


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) is not None:  # tuple[int, int], not the bare "tuple" of __name__
        return str(hint).replace("typing.", "")
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def coerce(value: Any, hint: Any, where: str) -> Any:
    """Check/convert one TOML (or env) value against a dataclass field's type; ``where`` names it."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            if arg is type(None) and value is None:
                return None
            try:
                return coerce(value, arg, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: expected {' or '.join(_type_name(a) for a in args)}, got {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is str or hint is Path:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return hint(value)
    if hint is Secret:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string")  # never echo a secret
        return Secret(value)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if args and len(args) != len(value):
            raise ConfigError(f"{where}: expected a list of {len(args)} items, got {value!r}")
        return tuple(
            coerce(v, a, f"{where}[{i}]")
            for i, (v, a) in enumerate(zip(value, args or [Any] * len(value), strict=False))
        )
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [coerce(v, args[0] if args else Any, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return value
    if isinstance(hint, type) and not isinstance(value, hint):
        raise ConfigError(f"{where}: expected {_type_name(hint)}, got {value!r}")
    return value


def build_table(
    cls: type, table: dict[str, Any], name: str, origin: str = "", from_env: dict[str, str] | None = None
) -> Any:
    """One dataclass from one TOML table: unknown keys refused, values type-checked, errors located.

    ``origin`` (the file) starts every message when given; ``from_env`` maps keys set by environment
    variables to the variable's name, for the messages.
    """
    from_env = from_env or {}
    heading = f"[{name}]" if name else "top level"
    where = f"{origin}: {heading}" if origin else heading
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table, got {type(table).__name__}")
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.init]
    known = [f.name for f in fields]
    kwargs: dict[str, Any] = {}
    for key, value in table.items():
        via = f" (from {from_env[key]})" if key in from_env else ""
        if key not in known:
            raise ConfigError(f"{where} unknown key '{key}'{via} (known: {', '.join(known)})")
        kwargs[key] = coerce(value, hints[key], f"{where} {key}{via}")
    for f in fields:
        if f.name not in kwargs and f.default is f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{where} missing required key '{f.name}'")
    try:
        return cls(**kwargs)
    except (FeatherFaceError, TypeError, ValueError) as exc:
        raise ConfigError(f"{where} {_located(str(exc), name, from_env)}") from None


def _located(message: str, name: str, from_env: dict[str, str]) -> str:
    """A table's own error under its ``[name]`` heading: without the repeated ``name.`` prefix, and
    naming the environment variable when the key it complains about came from one."""
    message = message.removeprefix(f"{name}.")
    # A table error names its key(s) at the start, as "key" or "name.key" (both forms in one message).
    via = [var for key, var in from_env.items() if re.search(rf"(^|[^\w.]|{name}\.){key}\b", message)]
    return message + (f" (from {', '.join(via)})" if via else "")
