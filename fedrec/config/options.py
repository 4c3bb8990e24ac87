"""Config options: a section is a frozen dataclass whose fields are config keys.

Field ``foo_bar`` is the key ``foo-bar`` of Flower's flat ``run_config``. Each field is
declared with :func:`option`: its default, its help text and its check live in one
place, as in PEFT's config dataclasses, and a section checks itself when built.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

POSITIVE = "> 0"
NON_NEGATIVE = ">= 0"
FRACTION = "in [0, 1]"
SHARE = "in (0, 1]"


class ConfigError(ValueError):
    """A configuration key or value is invalid."""


def option(default: Any, help: str, *, check: str | None = None, choices: tuple[str, ...] = ()) -> Any:
    """A config key: its default, help text, and a range check or a choice list."""
    return field(default=default, metadata={"help": help, "check": check, "choices": choices})


def key_of(field_name: str) -> str:
    """The config key of a field: ``foo_bar`` -> ``foo-bar``."""
    return field_name.replace("_", "-")


@dataclass(frozen=True)
class Section:
    """Base of the config sections; subclasses add :func:`option` fields and may
    override :meth:`validate` for checks that involve several of their keys.
    """

    title: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for f in fields(self):
            _check_value(key_of(f.name), getattr(self, f.name), f.metadata)
        self.validate()

    def validate(self) -> None:
        """Checks across this section's keys (none by default)."""

    @classmethod
    def keys(cls) -> dict[str, dataclasses.Field]:
        """Config key -> field, in declaration order."""
        return {key_of(f.name): f for f in fields(cls)}

    def values(self) -> dict[str, bool | int | float | str]:
        """The section's keys and values."""
        return {key_of(f.name): getattr(self, f.name) for f in fields(self)}


def _check_value(key: str, value: Any, metadata: Any) -> None:
    choices, check = metadata.get("choices", ()), metadata.get("check")
    if choices and value not in choices:
        raise ConfigError(f"config key '{key}' must be one of {', '.join(choices)}; got '{value}'")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"config key '{key}' must be finite, got {value}")
    if check == POSITIVE and not value > 0:
        raise ConfigError(f"config key '{key}' must be > 0, got {value}")
    if check == NON_NEGATIVE and not value >= 0:
        raise ConfigError(f"config key '{key}' must be >= 0, got {value}")
    if check == FRACTION and not 0.0 <= value <= 1.0:
        raise ConfigError(f"config key '{key}' must be in [0, 1], got {value}")
    if check == SHARE and not 0.0 < value <= 1.0:
        raise ConfigError(f"config key '{key}' must be in (0, 1], got {value}")


_TYPES = {"bool": bool, "int": int, "float": float, "str": str}


def coerce(key: str, value: Any, type_name: Any) -> Any:
    """Check (and where lossless, convert) a value to the field's type."""
    target = _TYPES[type_name if isinstance(type_name, str) else type_name.__name__]
    if target is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
    elif target is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
    elif target is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif isinstance(value, str):
        return value
    raise ConfigError(f"config key '{key}' expects {target.__name__}, got {value!r}")
