"""Settings declared once: a config dataclass's fields carry their help, flag and file key.

Each setting of a run is one field of a frozen dataclass, declared with :func:`option`::

    @dataclass(frozen=True)
    class TrainConfig:
        epochs: int = option(10, "Passes over the training pairs.", metavar="E")
        lr: float = option(1e-3, "Learning rate of the projectors.", flag="--lr")

From that one declaration come the API (``TrainConfig(epochs=3)``), the config-file reader
(:func:`load_config`: TOML or YAML with the fields' keys; an unknown key suggests the closest
valid one) and the command's options (:func:`alignkit.cli._options.config_options` turns the
fields into typer options, :func:`alignkit.cli._options.options_markdown` into a docs table).
:class:`alignkit.config.RankConfig` is the first user.
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, Field, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypeVar

from alignkit.errors import AlignkitError

C = TypeVar("C")


# ----------------------------------------------------------------------------------------------
# declaring options
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Option:
    """How one config field appears outside Python (kept in the field's ``metadata``).

    Attributes:
        help: one or two sentences for ``--help`` (the default is appended automatically).
        flag: the long command-line flag (default ``--`` + the field name with dashes).
        short: a one-letter alias such as ``-v``.
        metavar: the placeholder in ``--help`` (``SPEC``, ``ROWS``).
        key: the config-file key (default the field name).
        aliases: other config-file keys accepted for it (e.g. ``metric`` for ``metrics``).
        type: the command-line value type when the default's type does not say it.
        from_cli: converts the parsed command-line value to the field's value.
        repeat: a repeatable flag whose values form the field's tuple.
        cli: ``False`` keeps the field out of the command line.
        deprecated: old names still accepted, with a note: as config-file keys and (hidden)
            as flags (``batch_size`` -> the key ``batch_size`` and the flag ``--batch-size``).
    """

    help: str
    flag: str | None = None
    short: str | None = None
    metavar: str | None = None
    key: str | None = None
    aliases: tuple[str, ...] = ()
    type: type | None = None
    from_cli: Callable[[Any], Any] | None = None
    repeat: bool = False
    cli: bool = True
    deprecated: tuple[str, ...] = ()


class DeprecatedName(DeprecationWarning):
    """An old spelling that still works; the command line prints it as a ``note:``."""


def option(default: Any, help: str, **how: Any) -> Any:
    """A dataclass field with its :class:`Option` (see there for ``how``)."""
    return field(default=default, metadata={"option": Option(help, **how)})


def declared(cls: type) -> list[tuple[Field[Any], Option]]:
    """The fields of a config dataclass that carry an :class:`Option`, in declaration order."""
    return [(f, f.metadata["option"]) for f in fields(cls) if "option" in f.metadata]


def file_key(f: Field[Any]) -> str:
    opt = f.metadata.get("option")
    return (opt.key if opt is not None and opt.key else None) or f.name


def valid_keys(cls: type) -> tuple[str, ...]:
    """The config-file keys of ``cls`` (aliases left out), sorted."""
    return tuple(sorted(file_key(f) for f in fields(cls)))


def _field_by_key(cls: type) -> dict[str, str]:
    out: dict[str, str] = {}
    for f in fields(cls):
        out[file_key(f)] = f.name
        opt = f.metadata.get("option")
        for alias in (*opt.aliases, *opt.deprecated) if opt is not None else ():
            out[alias] = f.name
    return out


def default_of(f: Field[Any]) -> Any:
    return f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]


# ----------------------------------------------------------------------------------------------
# config files
# ----------------------------------------------------------------------------------------------
def config_from_mapping(data: Mapping[str, Any], *, source: str = "config", cls: type[C]) -> C:
    """Build a ``cls`` (a config dataclass) from file-style keys.

    An unknown key is an error that suggests the closest valid key and lists them all.
    """
    if not isinstance(data, Mapping):
        raise AlignkitError(
            f"{source}: expected a table of settings at the top level, got {type(data).__name__}"
        )
    by_key = _field_by_key(cls)
    unknown = sorted(k for k in data if k not in by_key)
    if unknown:
        valid = valid_keys(cls)
        close = {k: difflib.get_close_matches(k, list(by_key), n=1) for k in unknown}
        hints = "".join(f" (did you mean {c[0]!r}?)" for k, c in close.items() if c)
        raise AlignkitError(
            f"{source}: unknown key{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(map(repr, unknown))}{hints}; valid keys: {', '.join(valid)}"
        )
    names = [by_key[k] for k in data]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise AlignkitError(f"{source}: {', '.join(twice)} given twice (under an alias)")
    repeated = {f.name for f, opt in declared(cls) if opt.repeat}
    for f, opt in declared(cls):
        for old in set(opt.deprecated) & set(data):
            warnings.warn(
                f"{source}: the key {old!r} is deprecated; use {file_key(f)!r}",
                DeprecatedName,
                stacklevel=3,
            )
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        name = by_key[key]
        if name in repeated:
            if isinstance(value, (str, Mapping)):
                value = [value]
            if not isinstance(value, Sequence):
                raise AlignkitError(f"{source}: {key} must be a list, got {type(value).__name__}")
            value = tuple(value)
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except AlignkitError as exc:
        raise AlignkitError(f"{source}: {exc}") from None
    except TypeError as exc:  # e.g. a list where a number belongs
        raise AlignkitError(f"{source}: {exc}") from None


def _toml_loads(text: str) -> Any:
    try:
        import tomllib
    except ImportError:  # Python 3.10: the tomli backport (a dependency there), same API
        try:
            import tomli as tomllib
        except ImportError as exc:
            raise AlignkitError(
                "reading a .toml config on Python 3.10 needs the tomli package "
                "(pip install tomli), or use a .yaml config"
            ) from exc
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(str(exc)) from None


def load_config(path: str | Path, cls: type[C]) -> C:
    """Read a TOML (``.toml``) or YAML (``.yaml``/``.yml``) run config into ``cls``."""
    path = Path(path)
    if not path.is_file():
        raise AlignkitError(f"config file not found: {path}")
    suffix = path.suffix.lower()
    text = path.read_text(encoding="utf-8")
    if suffix == ".toml":
        try:
            data = _toml_loads(text)
        except ValueError as exc:
            raise AlignkitError(f"{path}: not valid TOML: {exc}") from None
    elif suffix in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise AlignkitError(f"{path}: not valid YAML: {first}") from None
        if data is None:
            data = {}
    else:
        raise AlignkitError(f"config file must end in .toml, .yaml or .yml: got {path.name!r}")
    return config_from_mapping(data, source=str(path), cls=cls)


def merge(base: C, **overrides: Any) -> C:
    """``base`` with every override that is not ``None`` applied (command-line options win).

    An empty tuple for a repeated option means "not given", as does ``False`` for a flag.
    """
    changes = {k: v for k, v in overrides.items() if v is not None}
    for f, opt in declared(type(base)):
        if f.name not in changes:
            continue
        if opt.repeat and not changes[f.name]:
            del changes[f.name]
        elif opt.type is None and isinstance(default_of(f), bool) and changes[f.name] is False:
            del changes[f.name]
    return replace(base, **changes) if changes else base  # type: ignore[type-var]


__all__ = [
    "DeprecatedName",
    "Option",
    "config_from_mapping",
    "declared",
    "default_of",
    "file_key",
    "load_config",
    "merge",
    "option",
    "valid_keys",
]
