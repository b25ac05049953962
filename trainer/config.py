"""Strict TOML -> frozen dataclass loading, shared by every trainer config (V1, Nano-B, pruning).

A config is a tree of frozen dataclasses; each table in the TOML file fills one dataclass field.
Every key is checked once, at start, by the strict table loader the edge's configs use too
(:func:`edge.tables.build_table`): unknown keys, missing required keys and wrongly typed values raise
:class:`ConfigError` with one line naming the file, the table and the key.

    cfg = load_config(Path("trainer/configs/v1.toml"), V1Config)
    cfg = override(cfg, {"data.label_file": "label.txt", "run.out_dir": "runs/x"})
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar, get_type_hints

from edge.errors import ConfigError
from edge.tables import build_table

T = TypeVar("T")


def load_config(path: str | Path, cls: type[T]) -> T:
    """Read the TOML file ``path`` into the frozen dataclass ``cls`` (strict, see module doc)."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"config file not found: {path}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
    return from_dict(cls, raw, source=str(path))


def from_dict(cls: type[T], data: Mapping[str, Any], source: str = "<config>", table: str = "") -> T:
    """Build dataclass ``cls`` from a mapping: nested dataclass fields recurse here, each table is
    checked by the edge's strict table loader (one set of rules for both config trees)."""
    if isinstance(data, Mapping):  # anything else is refused, named, by build_table
        hints = get_type_hints(cls)
        data = dict(data)
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            if f.name in data and dataclasses.is_dataclass(hints[f.name]):
                key = f"{table}.{f.name}" if table else f.name
                data[f.name] = from_dict(hints[f.name], data[f.name], source, key)
    return build_table(cls, data, table, origin=source)  # type: ignore[arg-type]


def to_dict(cfg: Any) -> dict[str, Any]:
    """The dataclass tree as plain TOML/JSON-compatible data (tuples become lists, Paths strings)."""

    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, tuple | list):
            return [conv(x) for x in v]
        if isinstance(v, Path):
            return str(v)
        return v

    return conv(cfg)


def override(cfg: T, values: Mapping[str, Any], source: str = "command line") -> T:
    """Return ``cfg`` with dotted keys replaced (``{"optim.lr": 0.01}``), validated like the file."""
    data = to_dict(cfg)
    for dotted, value in values.items():
        node = data
        *parents, leaf = dotted.split(".")
        for p in parents:
            if not isinstance(node.get(p), dict):
                raise ConfigError(f"{source}: unknown table {p!r} in key {dotted!r}")
            node = node[p]
        if leaf not in node:
            raise ConfigError(f"{source}: unknown key {dotted!r}")
        node[leaf] = str(value) if isinstance(value, Path) else value
    return from_dict(type(cfg), data, source=source)


def parse_assignments(items: Iterable[str]) -> dict[str, Any]:
    """``["distill.alpha=0", "run.device=\"cuda\""]`` -> ``{"distill.alpha": 0, ...}``.

    The value is read as a TOML value (numbers, booleans, ``[1, 2]``, quoted strings); anything that is
    not valid TOML is taken as a bare string, so ``run.device=cuda`` works too.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            value = tomllib.loads(f"v = {text.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = text.strip()
        out[key.strip()] = value
    return out
