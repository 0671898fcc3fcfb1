"""`alignkit list-encoders` through the console entry point."""

from __future__ import annotations

import pytest
from _cli import run_cli

from alignkit.encoders import OFFLINE_MODELS


def test_list_encoders_prints_every_registry_model_with_its_offline_status(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run_cli(["list-encoders"], capsys)
    assert code == 0
    lines = {line.split()[0]: line.split() for line in out.splitlines()[2:-1]}
    for spec, model in OFFLINE_MODELS.items():
        row = lines[spec]
        assert row[1] == model.modality and row[2] == str(model.dim)
        assert row[3] == ("yes" if model.installed else "no")
    assert lines["hf:facebook/dinov2-base"][3] in ("yes", "no")
    assert "offline now:" in out.splitlines()[-1]


def test_list_encoders_filters(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["list-encoders", "*minilm*", "--offline", "--modality", "text"], capsys)
    assert code == 0
    specs = [line.split()[0] for line in out.splitlines()[2:-1]]
    assert specs and all("minilm" in s.lower() for s in specs)
    assert all(
        line.split()[1] == "text" and line.split()[3] == "yes" for line in out.splitlines()[2:-1]
    )


def test_list_encoders_bad_option_is_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["list-encoders", "--modality", "audio"], capsys)
    assert code == 1
    assert err.strip() == "error: --modality must be image, text or all: got 'audio'"
