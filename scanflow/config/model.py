"""How a section of the configuration is typed and checked.

A section is a frozen standard-library dataclass: ``dataclasses.replace``, ``fields`` and ``asdict``
work on it, it pickles into Beam workers like any dataclass, and constructing one checks nothing.
Its fields are declared with the types and rules of this module, e.g.
``kafka_port: Annotated[Int, between(1024, 65535, "pick a free port")] = 9092``; pydantic converts
raw values to those types and runs the rules. :meth:`Section.validate` checks a section: every
field's type and rules, then :meth:`Section.check` (rules between fields); the first failure becomes
one :class:`ConfigError` line that names the key.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path
from typing import Annotated, Any, Callable

from pydantic import AfterValidator, BeforeValidator, ConfigDict, TypeAdapter, ValidationError

from scanflow.config.errors import ConfigError

#: The source checkout: defaults for infra scripts, caches and local state are relative to it.
REPO_ROOT = Path(__file__).resolve().parents[2]

#: TOML numbers given for a string setting (``client_id = 3``) are taken as their text.
_PYDANTIC_CONFIG = ConfigDict(coerce_numbers_to_str=True)


def resolve_path(value: str | os.PathLike[str]) -> Path:
    """A configured path: absolute as given, relative ones against the source checkout."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else REPO_ROOT / path


def _not_bool(expected: str) -> BeforeValidator:
    def refuse(raw: Any) -> Any:
        if isinstance(raw, bool):  # pydantic would take true as 1
            raise ConfigError(f"expected {expected}, got {raw!r}")
        return raw
    return BeforeValidator(refuse)


def _split(raw: Any) -> Any:
    """A list from the environment or ``--set`` is written ``a,b``; TOML arrays pass as they are."""
    return [part.strip() for part in raw.split(",") if part.strip()] if isinstance(raw, str) else raw


# Field types (``bool`` and ``str`` as they are: pydantic takes true/false, 1/0, yes/no, on/off).
Int = Annotated[int, _not_bool("a whole number")]
Float = Annotated[float, _not_bool("a number")]
Strs = Annotated[tuple[str, ...], BeforeValidator(_split)]
Floats = Annotated[tuple[Float, ...], BeforeValidator(_split)]


# Field rules: each raises ConfigError with the text after "section.key: ".

def checked(test: Callable[[Any], None]) -> AfterValidator:
    """A rule: ``test(value)`` raises :class:`ConfigError` when the value is wrong."""
    def run(value: Any) -> Any:
        test(value)
        return value
    return AfterValidator(run)


def rule(ok: Callable[[Any], bool], message: str) -> AfterValidator:
    """A rule: ``message`` (``{v}`` is the value) unless ``ok(value)``."""
    def test(value: Any) -> None:
        if not ok(value):
            raise ConfigError(message.format(v=value))
    return checked(test)


def positive(unit: str = "") -> AfterValidator:
    return rule(lambda v: v > 0, f"must be > 0{unit}, got {{v}}")


def between(low: float, high: float, fix: str = "") -> AfterValidator:
    return rule(lambda v: low <= v <= high, f"{{v}} is outside {low}..{high}" + (f"; {fix}" if fix else ""))


def one_of(*choices: str, note: str = "") -> AfterValidator:
    message = f"{{v!r}} is not one of {', '.join(choices)}" + (f" {note}" if note else "")
    return rule(lambda v: v in choices, message)


def existing_file(fix: str) -> AfterValidator:
    """An optional file: empty, or one that exists (relative paths against the checkout)."""
    return rule(lambda v: not v or resolve_path(v).is_file(), f"{{v}} does not exist; {fix}")


_EXPECTED = {"int": "a whole number", "float": "a number", "bool": "true or false", "string": "a string",
             "tuple": "a list"}


def _one_line(key: str, exc: ValidationError) -> ConfigError:
    """The first of pydantic's errors as ``key: what is wrong``."""
    error = exc.errors(include_url=False)[0]
    cause = error.get("ctx", {}).get("error")
    if isinstance(cause, ConfigError):  # one of our rules: its own words
        return ConfigError(f"{key}: {cause}")
    expected = _EXPECTED.get(error["type"].split("_")[0])
    what = f"expected {expected}" if expected else error["msg"]
    got = error["input"]
    shown = type(got).__name__ if expected == "a string" and isinstance(got, (dict, list)) else repr(got)
    return ConfigError(f"{key}: {what}, got {shown}")


def _text(value: Any) -> Any:
    """A path given in code (``Path``) for a path setting is taken as its text."""
    return os.fspath(value) if isinstance(value, os.PathLike) else value


@functools.cache
def _adapter(target: Any) -> TypeAdapter:
    if dataclasses.is_dataclass(target):  # a section: its own __pydantic_config__
        return TypeAdapter(target)
    return TypeAdapter(target, config=_PYDANTIC_CONFIG)


class Section:
    """Base of the sections: :meth:`validate`, and the hook :meth:`check` for rules between fields."""

    __pydantic_config__ = _PYDANTIC_CONFIG

    #: The section's name in TOML (``[kafka]``), the environment and ``--set``: set by each section.
    section_name = ""

    def validate(self):
        """Check every value; raise :class:`ConfigError` naming the key and the fix. Returns self."""
        values = {f.name: _text(getattr(self, f.name)) for f in dataclasses.fields(self)}
        try:
            typed = _adapter(type(self)).validate_python(values)
        except ValidationError as exc:
            raise _one_line(f"{self.section_name}.{exc.errors()[0]['loc'][0]}", exc) from None
        typed.check()
        return self

    def check(self) -> None:
        """Rules that involve several fields (raise :class:`ConfigError` naming the key)."""


#: Field types that :func:`typing.get_type_hints` reports for the types above.
_PARSED = {int: Int, float: Float, tuple[str, ...]: Strs, tuple[float, ...]: Floats}


def _coerce(key: str, raw: Any, target: Any) -> Any:
    """``raw`` (a TOML value, or a string from the environment or a flag) as ``target``, a field's
    type as :func:`typing.get_type_hints` gives it; or :class:`ConfigError` naming ``key``."""
    try:
        return _adapter(_PARSED.get(target, target)).validate_python(_text(raw))
    except ValidationError as exc:
        raise _one_line(key, exc) from None
