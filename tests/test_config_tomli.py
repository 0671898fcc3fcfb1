"""TOML run configs on Python 3.10, where the standard library has no ``tomllib``."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from alignkit.config import load_config
from alignkit.errors import AlignkitError

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib


def test_toml_config_reads_through_tomli_when_tomllib_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """requires-python allows 3.10: without ``tomllib`` the ``tomli`` backport (same API, a
    dependency there) must be used. Here ``tomllib`` is hidden and stood in for by ``tomli``."""
    monkeypatch.setitem(sys.modules, "tomllib", None)  # `import tomllib` now raises ImportError
    monkeypatch.setitem(sys.modules, "tomli", tomllib)
    path = tmp_path / "rank.toml"
    path.write_text('probe = "synthetic"\nn = 60\nk = 7\n')
    cfg = load_config(path)
    assert (cfg.probe, cfg.n, cfg.k) == ("synthetic", 60, 7)
    path.write_text("probe = \n")
    with pytest.raises(AlignkitError, match="not valid TOML"):  # the backport's error class
        load_config(path)


def test_the_backport_is_a_dependency_where_it_is_needed() -> None:
    text = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    deps = tomllib.loads(text)["project"]["dependencies"]
    assert any(d.replace(" ", "") == "tomli;python_version<'3.11'" for d in deps), deps
