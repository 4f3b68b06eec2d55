"""Typed job configs: pydantic models loadable from TOML and overridable with ``key=value``.

Every job (train ranker, train retrieval, experiments, serving) has one config class derived
from :class:`JobConfig`. Precedence: defaults < TOML file < command-line overrides. The resolved
config is written into the run folder as ``config.json`` (and read back from there by
``evaluate``/``predict``/``bundle``).
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, ValidationError

from ytdnn.utils.io import atomic_write_json, read_json


class ConfigError(ValueError):
    """A config file or override that does not fit the job's config; names the field."""


def _parse_value(text: str) -> Any:
    """Parse an override value as JSON when it looks like JSON (numbers, lists, true/false), else a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.replace("-", "_").split(".")
    node = tree
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: '{key}' is not a section")
    node[keys[-1]] = value


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _describe(error: Any) -> str:
    """One validation problem as 'field.path: message' (no path for a whole-config check)."""
    message = str(error["msg"]).removeprefix("Value error, ")
    where = ".".join(str(part) for part in error["loc"])
    return f"{where}: {message}" if where else message


class JobConfig(BaseModel):
    """Base of every job config: strict about unknown keys so typos fail loudly."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @classmethod
    def load(cls, path: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None) -> Self:
        """Defaults, then the TOML file at ``path``, then ``overrides`` (``["a.b=1", …]`` or a dict)."""
        tree: dict[str, Any] = {}
        if path is not None:
            path = Path(path)
            try:
                with open(path, "rb") as handle:
                    tree = tomllib.load(handle)
            except FileNotFoundError as exc:
                raise ConfigError(f"{path}: config file not found") from exc
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
        if isinstance(overrides, dict):
            for key, value in overrides.items():
                if value is not None:
                    _set_dotted(tree, key, value)
        elif overrides:
            for item in overrides:
                if "=" not in item:
                    raise ConfigError(f"override {item!r}: expected key=value")
                key, value = item.split("=", 1)
                _set_dotted(tree, key.strip(), _parse_value(value.strip()))
        return cls.from_tree(tree, source=str(path) if path else "overrides")

    @classmethod
    def from_tree(cls, tree: dict[str, Any], source: str = "config") -> Self:
        try:
            return cls.model_validate(tree)
        except ValidationError as exc:
            problems = "; ".join(_describe(err) for err in exc.errors())
            raise ConfigError(f"{source}: {problems}") from exc

    def merged(self, overrides: dict[str, Any]) -> Self:
        """A copy with ``overrides`` (dotted keys) applied; None values are ignored."""
        tree = self.model_dump(mode="json")
        extra: dict[str, Any] = {}
        for key, value in overrides.items():
            if value is not None:
                _set_dotted(extra, key, value)
        return type(self).from_tree(_deep_merge(tree, extra))

    def save(self, path: str | Path) -> None:
        atomic_write_json(path, {"job": type(self).__name__, "config": self.model_dump(mode="json")})

    @classmethod
    def read(cls, path: str | Path) -> Self:
        payload = read_json(path)
        return cls.from_tree(payload.get("config", payload), source=str(path))
