"""Reading ``iogate.toml``: ``${VAR}`` interpolation, validation, one-line errors.

This package and ``cli.py`` are the only places that read the environment.
Every problem is reported as a ConfigError whose message starts with the
key's dotted path, e.g. ``databases.main.max_conections: unknown key``.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from iogate.core.errors import ConfigError
from iogate.gateway.settings.databases import DATABASE_TYPES, unsupported_key
from iogate.gateway.settings.root import Settings

__all__ = [
    "DEFAULT_CONFIG",
    "config_source",
    "interpolate",
    "load_settings",
    "parse_settings",
    "read_config_text",
]

DEFAULT_CONFIG = """\
# Embedded default: used by `iogate serve` when no config file is given.
[gateway]
host = "127.0.0.1"
port = 8080

[databases.main]
type = "sqlite"
path = "iogate.db"

[databases.cache]
type = "memory"
"""


# -- interpolation -------------------------------------------------------------

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def interpolate(value: Any, env: Mapping[str, str], path: str = "") -> Any:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in every string of ``value``."""
    if isinstance(value, str):

        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in env and (env[name] != "" or default is None):
                return env[name]
            if default is not None:
                return default
            raise ConfigError(f"{path or '<root>'}: environment variable {name} is not set")

        return _VAR.sub(substitute, value)
    if isinstance(value, dict):
        return {k: interpolate(v, env, f"{path}.{k}" if path else k) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env, f"{path}[{i}]") for i, v in enumerate(value)]
    return value


# -- loading -------------------------------------------------------------------


def parse_settings(
    text: str, *, env: Mapping[str, str] | None = None, source: str = ""
) -> Settings:
    """Validate TOML text; ConfigError names the first bad key's path."""
    where = f"{source}: " if source else ""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}invalid TOML: {exc}") from None
    try:
        raw = interpolate(raw, os.environ if env is None else env)
    except ConfigError as exc:
        raise ConfigError(f"{where}{exc}") from None
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(where + _describe(exc)) from None


def read_config_text(path: str | Path | None) -> str:
    """The TOML text of ``path``, or the embedded default when ``path`` is None."""
    if path is None:
        return DEFAULT_CONFIG
    file = Path(path)
    try:
        return file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read config file ({exc.strerror})") from None


def config_source(path: str | Path | None) -> str:
    """How errors name the config: its path, or ``<embedded default>``."""
    return "<embedded default>" if path is None else str(path)


def load_settings(path: str | Path | None, *, env: Mapping[str, str] | None = None) -> Settings:
    """Settings from ``path``, or the embedded default when ``path`` is None."""
    return parse_settings(read_config_text(path), env=env, source=config_source(path))


def _describe(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        parts, db_type = _without_tag(error["loc"])
        if error["type"] in {"union_tag_not_found", "union_tag_invalid"}:
            parts = (*parts, "type")  # the key that picks the model
        loc = ""
        for part in parts:
            if isinstance(part, int):
                loc += f"[{part}]"
            elif part != "__root__":
                loc += f".{part}" if loc else str(part)
        lines.append(f"{loc}: {_message(error, db_type)}" if loc else _message(error, db_type))
    # One line: the CLI prints it as is, a reload logs it as one record.
    return " ".join("; ".join(lines).split("\n"))


def _without_tag(loc: tuple[int | str, ...]) -> tuple[tuple[int | str, ...], str | None]:
    """The path without the database type pydantic puts in it, and that type.

    A ``[databases.NAME]`` table is validated by the model its ``type``
    picks, and pydantic names that type in the path
    (``databases.cache.memory.read_only``); the file has no such key.
    """
    if len(loc) >= 3 and loc[0] == "databases" and loc[2] in DATABASE_TYPES:
        return (*loc[:2], *loc[3:]), str(loc[2])
    return loc, None


def _message(error: Any, db_type: str | None) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        key = error["loc"][-1]
        unsupported = unsupported_key(db_type, str(key)) if db_type is not None else None
        return unsupported or "unknown key"
    if kind == "missing":
        return "required key is missing"
    if kind == "union_tag_not_found":  # [databases.NAME] without type
        return f"required key is missing (one of: {', '.join(DATABASE_TYPES)})"
    if kind == "union_tag_invalid":
        return f"must be one of {', '.join(DATABASE_TYPES)} (got {error['input'].get('type')!r})"
    message = str(error["msg"]).removeprefix("Value error, ")
    if "input" in error and kind != "value_error" and not isinstance(error["input"], dict | list):
        message += f" (got {error['input']!r})"
    return message
