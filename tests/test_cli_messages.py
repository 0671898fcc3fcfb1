"""Every message a command-line user can see names things the command line has (issue 17 item 3).

Each command is run in-process (``tests/_cli.py``) on bad inputs a user makes: an unknown
encoder, a bad probe, a missing image, a labelled manifest without captions, bad option values,
missing data. Everything it prints on stderr is collected and must not carry Python-only advice:
``pass x=``, ``=True``, ``skip_bad=``, ``class_names=``, ``resume=False``, a snake_case argument
name of the command where its ``--flag`` belongs, or a ``--flag`` that the command does not have.
The inputs fail before any model runs (model-free ``random:`` encoders where one is needed).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _cli
import pytest
import typer.main
from PIL import Image

from alignkit.cli import app

PYTHON_ONLY = [
    re.compile(r"\b(?:pass|use|set|or|with) [a-z][a-z_]*=(?=[\s\w'\"(\[]|$)"),  # pass skip_bad=
    re.compile(r"\b[a-z][a-z_]*=(?:True|False|None)\b"),  # keep_going=True, resume=False
    re.compile(r"\b(?:skip_bad|class_names|keep_going|resume|cache_only)="),
]


def _commands() -> dict[str, Any]:
    out: dict[str, Any] = {}

    def walk(command: Any, path: tuple[str, ...]) -> None:
        if hasattr(command, "commands"):
            for name, sub in command.commands.items():
                walk(sub, (*path, name))
        else:
            out[" ".join(path)] = command

    walk(typer.main.get_command(app), ())
    return out


COMMANDS = _commands()


def python_only(command: str, message: str) -> list[str]:
    """What in ``message`` a user of ``alignkit COMMAND`` cannot act on."""
    found = [m.group(0) for pattern in PYTHON_ONLY for m in pattern.finditer(message)]
    params = [p for p in COMMANDS[command].params if p.param_type_name == "option"]
    flags = {flag for p in params for flag in [*p.opts, *p.secondary_opts]}
    for named in re.findall(r"alignkit ([a-z-]+(?: list| clear)?)", message):  # other commands
        if named in COMMANDS:
            flags |= {f for p in COMMANDS[named].params for f in getattr(p, "opts", [])}
    for flag in re.findall(r"(?<![\w/-])--[a-z][a-z0-9-]*", message):
        if flag not in flags:
            found.append(f"{flag} (no such option on {command})")
    snake = {p.name for p in params if "_" in (p.name or "")}
    # config-file keys are snake_case: a list of a file's valid keys is no Python advice
    prose = re.sub(r"(?:valid keys|expected some of): .*|'[^']*'", "", message)
    for word in re.findall(r"(?<![\w/.-])[a-z]+_[a-z_]+(?![\w/.=-])", prose):
        if word in snake:
            found.append(f"{word} (the Python name of --{word.replace('_', '-')})")
    return found


def test_the_check_finds_python_only_advice() -> None:
    """The check itself, on messages seen before the fix."""
    bad = "manifest m.jsonl has labels but no captions: pass class_names= (a list) or put it"
    assert python_only("extract", bad) == ["pass class_names=", "class_names="]
    assert python_only("rank-encoders", "x failed (keep_going=True ranks the others)") == [
        "keep_going=True",
        "keep_going=",
    ]
    assert python_only("evaluate", "a different recipe; pass resume=False") != []
    assert python_only("extract", "option(s) class_names do not apply to probe 'x'") == [
        "class_names (the Python name of --class-names)"
    ]
    assert python_only("extract", "pass --probe X.jsonl:train --resume") == [
        "--resume (no such option on extract)"
    ]
    assert python_only("extract", "n=12 rows; pass --top 3") == [
        "--top (no such option on extract)"
    ]
    assert not python_only("rank-encoders", "pass --skip-bad; then alignkit train --top 3")


# -- the inputs ---------------------------------------------------------------------------------
def _images(folder: Path, rows: int, missing: int = 0) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(rows):
        name = f"img{i:03d}.png"
        if i < rows - missing:
            Image.new("RGB", (8, 8), (i * 9 % 256, 90, i % 5 * 40)).save(folder / name)
        names.append(name)
    return names


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("messages")
    names = _images(root / "img", 12, missing=1)
    rows = [
        {"id": f"r{i}", "image": f"img/{n}", "caption": f"a picture {i}"}
        for i, n in enumerate(names)
    ]
    paths = {"root": root}
    paths["missing_image"] = root / "missing.jsonl"
    paths["missing_image"].write_text("".join(json.dumps(r) + "\n" for r in rows))
    paths["good"] = root / "good.jsonl"
    paths["good"].write_text("".join(json.dumps(r) + "\n" for r in rows[:-1]))
    paths["labelled"] = root / "labelled.jsonl"
    paths["labelled"].write_text(
        "".join(
            json.dumps({"id": r["id"], "image": r["image"], "label": 1}) + "\n" for r in rows[:-1]
        )
    )
    paths["split"] = root / "split.jsonl"
    paths["split"].write_text(
        "".join(
            json.dumps({**r, "split": "train" if i % 2 else "val"}) + "\n"
            for i, r in enumerate(rows[:-1])
        )
    )
    paths["run"] = root / "old-run"
    paths["run"].mkdir()
    (paths["run"] / "run.json").write_text("{}")
    (paths["run"] / "scores.csv").write_text("old")
    paths["bad_toml"] = root / "bad.toml"
    paths["bad_toml"].write_text("visoin = ['x']\n")
    paths["grid"] = root / "grid.toml"
    paths["grid"].write_text(
        "vision = ['random:image-16']\ntext = ['random:text-16']\nrecipe = 3\n"
    )
    return paths


FAST = ["--cache", "off", "-q"]
RANK = ["-v", "random:image-16", "-t", "random:text-16", "--metric", "linear_cka_unbiased"]
RANK += ["--permutations", "5", "--subsamples", "0"]
EXTRACT = ["-e", "random:image-16"]

# command -> bad inputs, each a function of the data paths giving argv after the command name
CASES: dict[str, list[Callable[[dict[str, Path]], list[str]]]] = {
    "rank-encoders": [
        lambda d: ["-v", "nosuch:model", "-t", "random:text-16", "-p", str(d["missing_image"])],
        lambda d: [*RANK, "-v", "random-init:onnx:x", "-p", str(d["missing_image"])],
        lambda d: [*RANK, "-v", "hf:nosuch/model-xyz", "-p", str(d["good"])],
        lambda d: [*RANK, "-v", "random-init:torchvision:nosuch", "-p", str(d["good"])],
        lambda d: [*RANK, "-p", "nosuch-probe"],
        lambda d: [*RANK, "-p", str(d["missing_image"])],
        lambda d: [*RANK, "-p", str(d["labelled"])],
        lambda d: [*RANK, "-p", "synthetic", "--class-names", str(d["root"] / "none.txt")],
        lambda d: [*RANK, "-p", str(d["good"]), "-n", "500"],
        lambda d: [*RANK, "-p", str(d["good"]), "-n", "3"],
        lambda d: [*RANK, "-p", f"{d['split']}:test"],
        lambda d: [*RANK, "--metric", "cka"],
        lambda d: [*RANK, "--null", "exact"],
        lambda d: [*RANK, "--layers", "some"],
        lambda d: [*RANK, "--caption-policy", "all"],
        lambda d: [*RANK, "--alpha", "2"],
        lambda d: [*RANK, "--k", "0"],
        lambda d: [*RANK, "--extract-batch", "0"],
        lambda d: [*RANK, "--threads", "0"],
        lambda d: [*RANK, "--device", "cuda:7"],
        lambda d: [*RANK, "--set", "offline-tiny"],
        lambda d: [*RANK, "-p", str(d["good"]), "-o", str(d["run"])],
        lambda d: [*RANK, "-c", str(d["bad_toml"])],
        lambda d: [*RANK, "-c", str(d["root"] / "none.toml")],
    ],
    "extract": [
        lambda d: ["-e", "nosuch:model", "-p", str(d["good"])],
        lambda d: ["-p", str(d["good"])],
        lambda d: [*EXTRACT, "-p", "nosuch-probe"],
        lambda d: [*EXTRACT, "-p", str(d["missing_image"])],
        lambda d: ["-e", "random:text-16", "-p", str(d["labelled"])],
        lambda d: [*EXTRACT, "-p", "synthetic", "--class-names", "imagenet"],
        lambda d: [*EXTRACT, "-p", str(d["good"]), "-n", "500"],
        lambda d: [*EXTRACT, "-p", "synthetic", "--split", "train"],
        lambda d: [*EXTRACT, "-p", str(d["good"]), "--split", "train"],
        lambda d: [*EXTRACT, "-p", f"{d['split']}:test"],
        lambda d: [*EXTRACT, "--caption-policy", "every"],
        lambda d: [*EXTRACT, "--extract-batch", "0"],
        lambda d: [*EXTRACT, "--workers", "-1"],
        lambda d: [*EXTRACT, "--device", "cuda:7"],
        lambda d: [*EXTRACT, "-e", "random:text-8", "-o", str(d["root"] / "x.safetensors")],
        lambda d: [*EXTRACT, "-c", str(d["bad_toml"])],
    ],
    "train": [
        lambda d: ["-v", "random:image-16", "-t", "random:text-16"],
        lambda d: ["-v", "random:image-16", "-o", str(d["root"] / "t1")],
        lambda d: [
            "-v",
            "random:image-16",
            "-t",
            "random:text-16",
            "--projector",
            "big",
            "-o",
            str(d["root"] / "t2"),
        ],
        lambda d: ["--from-ranking", str(d["root"]), "-o", str(d["root"] / "t3")],
        lambda d: [
            "-v",
            "random:image-16",
            "-t",
            "random:text-16",
            "-p",
            str(d["missing_image"]),
            "-o",
            str(d["root"] / "t4"),
        ],
        lambda d: [
            "-v",
            "random:image-16",
            "-t",
            "random:text-16",
            "-p",
            str(d["labelled"]),
            "-o",
            str(d["root"] / "t5"),
        ],
        lambda d: [
            "-v",
            "random:image-16",
            "-t",
            "random:text-16",
            "-p",
            str(d["good"]),
            "--val",
            str(d["good"]),
            "-o",
            str(d["root"] / "t6"),
        ],
    ],
    "evaluate": [
        lambda d: ["--run", str(d["root"] / "nothing"), "--retrieval", "flickr8k:test"],
        lambda d: ["--run", str(d["run"]), "--retrieval", "flickr8k:test"],
        lambda d: ["--run", str(d["run"])],
        lambda d: [
            "--run",
            str(d["run"]),
            "--zeroshot",
            str(d["labelled"]),
            "--templates",
            "nosuch",
        ],
    ],
    "predictivity": [
        lambda d: ["--grid", str(d["root"] / "none.toml"), "--out", str(d["root"] / "p1")],
        lambda d: ["--grid", str(d["bad_toml"]), "--out", str(d["root"] / "p2")],
        lambda d: ["--grid", str(d["grid"]), "--out", str(d["root"] / "p3")],
    ],
    "cache list": [lambda d: ["--cache", "off"]],
    "cache clear": [lambda d: ["--cache", "off", "--yes"]],
    "list-encoders": [lambda d: ["--modality", "audio"]],
}


def test_every_command_has_bad_inputs() -> None:
    assert set(CASES) == set(COMMANDS)


@pytest.mark.parametrize("command", sorted(CASES))
def test_messages_name_what_the_command_line_has(
    command: str, data: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    seen = []
    for case in CASES[command]:
        argv = [*command.split(), *case(data)]
        if command in ("rank-encoders", "extract", "train", "evaluate"):
            argv += [a for a in FAST if a not in argv] if "--cache" not in argv else ["-q"]
        code, _, err = _cli.run_cli(argv, capsys)
        assert code != 0, f"alignkit {' '.join(argv)} succeeded; the case is not a bad input"
        assert "Traceback" not in err, err
        for line in err.splitlines():
            seen += [
                f"{' '.join(argv[:3])} ...: {line!r}: {bad}" for bad in python_only(command, line)
            ]
    assert not seen, "Python-only advice in CLI messages:\n" + "\n".join(seen)
