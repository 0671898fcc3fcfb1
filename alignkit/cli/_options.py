"""Command-line options generated from a config dataclass (see :mod:`alignkit.config`).

A command whose settings are a config dataclass declares no option of its own for them::

    @app.command("rank-encoders")
    @config_options(RankConfig)
    def rank_encoders_command(cfg_values: dict, out: OutOpt = None, ...):
        cfg = base.replace(**cfg_values)

:func:`config_options` adds one typer option per :func:`alignkit.options.option` field (its flag,
short alias, metavar, help text with the default) to the command's own parameters, and hands the
command the options the user gave as one dict keyed by field name, already converted by each
option's ``from_cli`` (apply them with ``config.replace(**cfg_values)``). A field's deprecated
names (:attr:`alignkit.options.Option.deprecated`) become hidden flags that still work and print
a note naming the new flag.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable, Iterator
from typing import Annotated, Any

import typer

from alignkit.errors import AlignkitError
from alignkit.options import Option, declared, default_of, file_key
from alignkit.vocabulary import SHARED

VALUES = "cfg_values"  # the parameter that receives the config options
OLD = "deprecated__"  # prefix of the parameters of the hidden, deprecated flags


def _default_text(value: Any) -> str:
    """The default as ``--help`` shows it; none for flags, empty lists and ``None`` (their help
    text says what happens)."""
    if isinstance(value, tuple):
        return ", ".join(map(str, value))
    return "" if value is None or isinstance(value, bool) else str(value)


def typer_parameters(cls: type) -> list[inspect.Parameter]:
    """One keyword-only parameter per declared field of ``cls`` with its ``typer.Option``."""
    params = []
    for f, opt in declared(cls):
        if not opt.cli:
            continue
        default = default_of(f)
        decls = _decls(f.name, opt)
        help_text = _help(opt, default)
        if opt.repeat:
            kind: Any = list[str] | None
            value: Any = None
        elif isinstance(default, bool) and opt.type is None:
            kind, value = bool, False
        else:
            kind = (opt.type or type(default)) | None
            value = None
        info = typer.Option(*decls, metavar=opt.metavar, help=help_text, show_default=False)
        params.append(
            inspect.Parameter(
                f.name,
                inspect.Parameter.KEYWORD_ONLY,
                default=value,
                annotation=Annotated[kind, info],
            )
        )
        for old in opt.deprecated:
            hidden = typer.Option(_flag(old), metavar=opt.metavar, hidden=True)
            params.append(
                inspect.Parameter(
                    OLD + old,
                    inspect.Parameter.KEYWORD_ONLY,
                    default=value,
                    annotation=Annotated[kind, hidden],
                )
            )
    return params


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _decls(name: str, opt: Option) -> list[str]:
    return [opt.flag or _flag(name), *([opt.short] if opt.short else [])]


def _help(opt: Option, default: Any) -> str:
    shown = _default_text(default)
    return opt.help + (f" Default: {shown}." if shown else "")


def shared_option(name: str) -> Any:
    """The ``typer.Option`` of the shared concept ``name`` (:data:`alignkit.vocabulary.SHARED`)
    for a command whose settings are not a config dataclass (``alignkit cache list``): the same
    flag, short flag, metavar and help as on every other command. Its value is the raw
    command-line value (``None``: not given); convert it with the concept's ``from_cli``."""
    default, how = SHARED[name]
    return typer.Option(
        *_decls(name, how), metavar=how.metavar, help=_help(how, default), show_default=False
    )


def flag_of(cls: type, name: str) -> str:
    """The command-line flag of the field ``name`` of ``cls``."""
    opt = dict((f.name, o) for f, o in declared(cls))[name]
    return opt.flag or _flag(name)


def _take_deprecated(kwargs: dict[str, Any], name: str, opt: Any) -> Any:
    """The value of the field ``name`` given under an old flag (noted on stderr), else None."""
    value = None
    for old in opt.deprecated:
        given = kwargs.pop(OLD + old)
        if given is None or given is False:
            continue
        new = opt.flag or _flag(name)
        if kwargs.get(name) not in (None, False) or value is not None:
            raise AlignkitError(f"give {new} once: got it also as {_flag(old)}")
        typer.secho(f"note: {_flag(old)} is deprecated; use {new}", err=True)
        value = given
    return value


def config_options(cls: type) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a command so that the fields of ``cls`` become its options (see module doc)."""
    fields_ = {f.name: opt for f, opt in declared(cls) if opt.cli}

    def wrap(command: Callable[..., Any]) -> Callable[..., Any]:
        own = [
            p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
            for p in inspect.signature(command, eval_str=True).parameters.values()
            if p.name != VALUES
        ]
        clash = {p.name for p in own} & set(fields_)
        if clash:  # pragma: no cover - a programming error
            raise TypeError(f"{command.__name__}: parameters {clash} shadow config fields")

        @functools.wraps(command)
        def run(**kwargs: Any) -> Any:
            values = {}
            for name, opt in fields_.items():
                old = _take_deprecated(kwargs, name, opt)
                value = kwargs.pop(name) if old is None else old
                kwargs.pop(name, None)
                if value is None or value is False or (opt.repeat and not value):
                    continue  # not given: the config file or the default decides
                if opt.repeat:
                    value = tuple(value)
                elif opt.from_cli is not None:
                    value = opt.from_cli(value)
                values[name] = value
            return command(**{VALUES: values}, **kwargs)

        run.__signature__ = inspect.Signature([*typer_parameters(cls), *own])  # type: ignore[attr-defined]
        run.__annotations__ = {}
        del run.__wrapped__  # typer must read the generated signature, not the original's
        return run

    return wrap


def options_markdown(cls: type) -> str:
    """A markdown table of the command-line options of ``cls`` (for docs/; a test keeps the
    table in docs/ranking.md equal to this, so the docs cannot drift from the declaration)."""
    rows = ["| option | config key | meaning |", "|---|---|---|"]
    for f, opt in declared(cls):
        if not opt.cli:
            continue
        flag = opt.flag or "--" + f.name.replace("_", "-")
        names = f"`{flag}`" + (f", `{opt.short}`" if opt.short else "")
        if opt.metavar:
            names += f" {opt.metavar.replace('|', chr(92) + '|')}"
        key = f"`{file_key(f)}`" + "".join(f", `{a}`" for a in opt.aliases)
        text = opt.help
        shown = _default_text(default_of(f))
        if shown:
            text += f" Default: {shown}."
        if opt.deprecated:
            old = ", ".join(f"`{_flag(o)}`/`{o}`" for o in opt.deprecated)
            text += f" Formerly {old} (still accepted, with a note)."
        rows.append(f"| {names} | {key} | {text.replace('|', chr(92) + '|')} |")
    return "\n".join(rows)


@contextlib.contextmanager
def in_cli_words(cls: type, extra: dict[str, str] | None = None) -> Iterator[None]:
    """Re-raise a library :class:`~alignkit.errors.AlignkitError` in the command's words
    (:func:`cli_words`): the library names Python arguments, the user typed flags."""
    try:
        yield
    except AlignkitError as exc:
        raise AlignkitError(cli_words(str(exc), cls, extra)) from exc


def cli_words(message: str, cls: type, extra: dict[str, str] | None = None) -> str:
    """A library message in the command's words: ``keep_going=True`` -> ``--keep-going``,
    ``or subsamples=0`` -> ``or --subsamples 0`` (after pass/or/use/set only, so facts such as
    ``n=12 rows`` stay), ``(n)`` -> ``(--n)``, ``caption_policy must`` -> ``--caption-policy
    must``, ``option(s) class_names`` -> ``option(s) --class-names`` for the fields of ``cls``
    (and ``extra``: ``{"overwrite": "--overwrite"}``)."""
    import re

    flags = {f.name: opt.flag or "--" + f.name.replace("_", "-") for f, opt in declared(cls)}
    flags.update(extra or {})
    for name, flag in sorted(flags.items(), key=lambda kv: -len(kv[0])):
        message = re.sub(rf"\b{name}=True\b", flag, message)
        advice = (
            r"(?:(?<=pass )|(?<=or )|(?<=use )|(?<=set ))"  # "or subsamples=0", not "n=12 rows"
        )
        message = re.sub(rf"{advice}{name}=(?=\S)", flag + " ", message)
        message = re.sub(rf"{advice}{name}=(?=\s)", flag, message)  # "pass class_names= (a"
        message = re.sub(rf"\({name}\)", f"({flag})", message)
        message = re.sub(rf"(?<![\w.-]){name}(?= must\b)", flag, message)
        message = re.sub(rf"(?<=option\(s\) ){name}\b", flag, message)  # "do not apply"
    return message


__all__ = [
    "cli_words",
    "config_options",
    "flag_of",
    "in_cli_words",
    "options_markdown",
    "shared_option",
    "typer_parameters",
]
