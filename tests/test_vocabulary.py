"""One vocabulary across the commands: a shared concept has one flag, one short flag, one default
and one meaning on every command of ``alignkit`` (issue 17 item 7, issue 20 item 3).

The shared concepts are :data:`alignkit.vocabulary.SHARED` (config fields) and the CLI-only words
of :mod:`alignkit.cli._common` (``--out/-o``, ``--config/-c``, ``--overwrite``, ``--quiet/-q``).
The commands are read from the typer app itself, so a new command is held to the same table.
Hidden options (old spellings kept for a while with a note) are exempt.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

import pytest
import typer.main

from alignkit.cli import app
from alignkit.cli._options import _default_text
from alignkit.vocabulary import SHARED

# CLI-only words: concept -> (flag, short flag, default)
CLI_WORDS: dict[str, tuple[str, str | None, Any]] = {
    "out": ("--out", "-o", None),
    "config": ("--config", "-c", None),
    "overwrite": ("--overwrite", None, False),
    "quiet": ("--quiet", "-q", False),
}

# other ways to spell a shared concept, which no command may use (except hidden)
OTHER_SPELLINGS: dict[str, tuple[str, ...]] = {
    "extract_batch": ("--extract-batch-size", "--extraction-batch", "--extract-bs"),
    "device": ("--devices", "--gpu", "--cuda"),
    "cache": ("--cache-dir", "--no-cache", "--cache-root"),
    "skip_bad": ("--skip-bad-rows", "--skip-errors", "--drop-bad"),
    "threads": ("--num-threads", "--n-threads", "--nthreads"),
    "seed": ("--random-seed", "--rng-seed"),
    "n": ("--rows", "--n-rows", "--num-rows", "--subsample", "--limit"),
    "out": ("--output", "--output-dir", "--out-dir", "--outdir"),
    "config": ("--config-file", "--cfg"),
    "overwrite": ("--force", "--replace"),
    "quiet": ("--silent", "--no-progress"),
}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _shared_table() -> dict[str, dict[str, Any]]:
    """concept -> {flag, short, default, help}: what every command must show for it."""
    table = {}
    for name, (default, how) in SHARED.items():
        table[name] = {
            "flag": how.flag or _flag(name),
            "short": how.short,
            "default": default,
            "help": how.help,
        }
    for name, (flag, short, default) in CLI_WORDS.items():
        table[name] = {"flag": flag, "short": short, "default": default, "help": None}
    return table


def _commands() -> list[tuple[str, Any]]:
    out = []

    def walk(command: Any, path: tuple[str, ...]) -> None:
        if hasattr(command, "commands"):  # a group: its subcommands
            for name, sub in command.commands.items():
                walk(sub, (*path, name))
        else:
            out.append((" ".join(path), command))

    walk(typer.main.get_command(app), ())
    return sorted(out, key=lambda nc: nc[0])


COMMANDS = _commands()
SHARED_TABLE = _shared_table()


def test_every_command_is_checked() -> None:
    names = {name for name, _ in COMMANDS}
    assert {"rank-encoders", "extract", "train", "evaluate", "predictivity"} <= names
    assert {"list-encoders", "cache list", "cache clear"} <= names


def _problems(command: Any) -> list[str]:
    problems = []
    options = [p for p in command.params if p.param_type_name == "option" and not p.hidden]
    by_flag = {flag: p for p in options for flag in [*p.opts, *p.secondary_opts]}
    for concept, want in SHARED_TABLE.items():
        flags = {want["flag"], *([want["short"]] if want["short"] else [])}
        param = by_flag.get(want["flag"])
        for other in OTHER_SPELLINGS.get(concept, ()):
            if other in by_flag:
                problems.append(f"{other} spells {want['flag']} another way")
        if want["short"] and want["short"] in by_flag and by_flag[want["short"]] is not param:
            problems.append(
                f"{want['short']} means {by_flag[want['short']].opts[0]}, not {want['flag']}"
            )
        named = next((p for p in options if p.name == concept), None)
        if param is None:
            if named is not None:
                problems.append(f"{named.opts[0]} spells {want['flag']} another way")
            continue
        got = set(param.opts) | set(param.secondary_opts)
        if got != flags:
            problems.append(f"{want['flag']}: flags {sorted(got)}, expected {sorted(flags)}")
        problems += _default_problems(want, param)
    for p in options:  # --batch-size is the training batch only
        if "--batch-size" in p.opts and re.search(r"extract|forward pass", p.help or "", re.I):
            problems.append("--batch-size means the extraction batch; that is --extract-batch")
    return problems


def _default_problems(want: dict[str, Any], param: Any) -> list[str]:
    """The default is the shared one: as the option's own default (hand-written options) or in
    its help (options generated from a config field default to None, 'not given')."""
    flag, default, helptext = want["flag"], want["default"], param.help or ""
    if param.default not in (None, False) or (default is not None and default is not False):
        if param.default not in (None, False, default):
            return [f"{flag}: default {param.default!r}, expected {default!r}"]
    shown = _default_text(default)
    if want["help"] is None:
        return []
    problems = []
    if not helptext.startswith(want["help"]):
        problems.append(f"{flag}: help {helptext!r} is not the shared one {want['help']!r}")
    declared = re.findall(r"Default: ([^\s].*?)\.(?:\s|$)", helptext[len(want["help"]) :])
    if shown and param.default in (None, False) and declared != [shown]:
        problems.append(f"{flag}: help says default {declared}, expected {shown!r}")
    return problems


@pytest.mark.parametrize("name,command", COMMANDS, ids=[n for n, _ in COMMANDS])
def test_shared_options_are_spelled_as_declared(name: str, command: Any) -> None:
    """Every shared concept a command has: the shared flag, short flag and default; and no
    other spelling of it (e.g. --batch-size for the extraction batch, --device defaulting to
    cpu, --n without -n)."""
    problems = _problems(command)
    assert not problems, f"alignkit {name}: " + "; ".join(problems)


def test_the_check_catches_what_it_should() -> None:
    """The check itself, on a made-up command with every kind of mistake."""
    bad = typer.Typer()

    @bad.command()
    def cmd(
        device: Annotated[str, typer.Option(help="auto, cpu")] = "cpu",
        n: Annotated[int | None, typer.Option("--n")] = None,
        batch_size: Annotated[int, typer.Option(help="rows per extraction forward pass")] = 64,
        cache_dir: Annotated[str | None, typer.Option("--cache-dir")] = None,
        output: Annotated[str | None, typer.Option("--output", "-o")] = None,
        quiet: Annotated[bool, typer.Option("--quiet/--loud")] = False,
    ) -> None:
        pass

    problems = " | ".join(_problems(typer.main.get_command(bad)))
    assert "--device: default 'cpu', expected 'auto'" in problems
    assert "--n: flags ['--n'], expected ['--n', '-n']" in problems
    assert "--batch-size means the extraction batch" in problems
    assert "--cache-dir spells --cache another way" in problems
    assert "--output spells --out another way" in problems and "-o means --output" in problems
    assert "--quiet: flags ['--loud', '--quiet'], expected ['--quiet', '-q']" in problems


def test_every_command_that_reads_a_probe_takes_skip_bad() -> None:
    """Options mean the same on every command that reads a probe (issue 17 item 4): each of them
    can skip bad probe rows."""
    commands = dict(COMMANDS)
    for name in ("rank-encoders", "extract", "train", "evaluate", "predictivity"):
        flags = {f for p in commands[name].params for f in getattr(p, "opts", [])}
        assert "--skip-bad" in flags, f"alignkit {name} has no --skip-bad"
