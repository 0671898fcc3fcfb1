"""The notebooks in notebooks/ are committed WITH their outputs (figures as small PNGs), executed by
the code here, which is also the code CI runs: ``python tests/test_notebooks.py`` re-executes
every notebook and writes it back (nbclient, kernel ``python3``, inline PNG figures at a small
dpi). Text that states a result is printed by a cell from the computed values, never written in a
markdown cell by hand; the tests below hold the printed readings to the tables they read.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
COMMITTED = [p for p in NOTEBOOKS if p.name.startswith(("01_", "02_", "03_"))]  # with outputs
RANKING = [p for p in COMMITTED if p.name.startswith(("01_", "02_"))]  # they rank encoders
MAX_BYTES = 300_000
DPI = 60  # figures as the reader sees them on a code host, kept small


def _environment() -> dict[str, str]:
    env = {"MPLBACKEND": "module://matplotlib_inline.backend_inline"}
    shared = Path(__file__).resolve().parents[2] / "shared" / "data"
    if "ALIGNKIT_DATA_DIR" not in os.environ and (shared / "flickr8k" / "pairs.jsonl").exists():
        env["ALIGNKIT_DATA_DIR"] = str(shared)  # the kernel inherits the environment
    return env


def execute(path: Path, extra: list[str] = ()):  # noqa: ANN201 - an nbformat NotebookNode
    """``path`` executed top to bottom in a fresh kernel (cells ``extra`` appended, for tests);
    the notebook node with its outputs."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    setup = nbformat.v4.new_code_cell(
        f"%config InlineBackend.figure_formats = ['png']\n"
        f"%config InlineBackend.rc = {{'figure.dpi': {DPI}}}"
    )
    nb.cells.insert(0, setup)
    nb.cells += [nbformat.v4.new_code_cell(src) for src in extra]
    client = NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    )
    client.execute()
    nb.cells.pop(0)
    for cell in nb.cells:  # progress bars and import chatter: not results, and not the same twice
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.outputs if not _noise(o)]
    return nb


def _noise(output) -> bool:  # noqa: ANN001
    text = output.get("text", "") if output.get("name") == "stderr" else ""
    return bool(re.search(r"it/s\]|s/it\]|TqdmWarning|from \.autonotebook", text))


def write(path: Path) -> None:
    """Execute ``path`` and write it back with its outputs (run before committing a change)."""
    import nbformat

    nb = execute(path)
    for i, cell in enumerate(c for c in nb.cells if c.cell_type == "code"):
        cell.execution_count = i + 1
        cell.outputs = [o for o in cell.outputs if o.get("name") != "stderr"]  # progress bars
        for output in cell.outputs:
            if "execution_count" in output:
                output["execution_count"] = i + 1
    nbformat.write(nb, path)


def _text(cell) -> str:  # noqa: ANN001
    """What a cell printed and returned; stderr left out (progress bars and the blank lines they
    leave depend on whether the features were in the cache)."""
    return "".join(
        o.get("text", "") + o.get("data", {}).get("text/plain", "")
        for o in cell.get("outputs", [])
        if o.get("name") != "stderr"
    )


def _errors(nb) -> list[str]:  # noqa: ANN001
    return [
        f"{o.ename}: {o.evalue}"
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
        if o.output_type == "error"
    ]


@pytest.mark.parametrize("path", COMMITTED, ids=[p.name for p in COMMITTED])
def test_notebooks_are_committed_with_their_outputs(path: Path) -> None:
    import nbformat

    assert path.stat().st_size < MAX_BYTES, f"{path.name}: {path.stat().st_size} bytes"
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), "run in order"
    assert not _errors(nb)
    figures = [o for c in code for o in c.outputs if "image/png" in o.get("data", {})]
    assert figures, f"{path.name} shows no figure"
    plotted = [c for c in code if "plt.show()" in c.source]
    assert all(any("image/png" in o.get("data", {}) for o in c.outputs) for c in plotted)


def _readings_agree(nb, table: dict, layer_table: dict | None) -> None:  # noqa: ANN001
    """The sentences a notebook prints about its result say what its own tables hold."""
    text = "\n".join(_text(c) for c in nb.cells if c.cell_type == "code")
    rows = list(zip(*table.values(), strict=True))
    columns = list(table)
    for metric in ("linear_cka_unbiased", "linear_cka"):
        line = next((ln for ln in text.splitlines() if ln.startswith(f"{metric}: control")), None)
        if line is None:
            continue
        score = [r[columns.index(metric)] for r in rows]
        control = [s for s, r in zip(score, rows, strict=True) if r[columns.index("control")]]
        real = [s for s, r in zip(score, rows, strict=True) if not r[columns.index("control")]]
        want = "below" if max(control) < min(real) else "NOT below"
        assert line.endswith(f", {want} every real pair"), line
        z = [r[columns.index(f"{metric}_z")] for r in rows if r[columns.index("control")]]
        assert f"(z {min(z):.1f} to {max(z):.1f})" in line, line
    if layer_table is not None:
        for p_own, p_corrected in zip(
            layer_table["p_best_uncorrected"], layer_table["p_max_corrected"], strict=True
        ):
            assert f"p = {p_own:.3f} on its own" in text and f"{p_corrected:.3f} corrected" in text


TABLES = (
    "import json\n"
    "print('TABLE=' + ranking.table.to_json(orient='columns'))\n"
    "layers = ranking.layer_table().to_json(orient='columns') if ranking.layers else 'null'\n"
    "print('LAYERS=' + layers)"
)


@pytest.mark.notebook
@pytest.mark.real
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs_and_its_readings_hold(path: Path, monkeypatch) -> None:
    """Executed as CI does: no error; the control shows in the ranking; every printed reading
    agrees with the tables of the same run; and a committed notebook's printed text is what
    this run prints (when it ran on the same probe; times and folders aside)."""
    import nbformat

    for key, value in _environment().items():
        monkeypatch.setenv(key, value)
    committed = path in RANKING
    nb = execute(path, extra=[TABLES] if committed else [])
    assert not _errors(nb)
    text = "".join(_text(c) for c in nb.cells if c.cell_type == "code")
    assert "rand-init" in text  # the ranking table shows its control
    if not committed:
        return
    printed = _text(nb.cells[-1])
    table = {
        k: list(v.values())
        for k, v in json.loads(printed.split("TABLE=")[1].splitlines()[0]).items()
    }
    layers = json.loads(printed.split("LAYERS=")[1].splitlines()[0])
    layers = None if layers is None else {k: list(v.values()) for k, v in layers.items()}
    _readings_agree(nb, table, layers)
    before = nbformat.read(path, as_version=4)
    now = [c for c in nb.cells if c.cell_type == "code"][: len(before.cells)]
    then = [c for c in before.cells if c.cell_type == "code"]
    if _text(then[0]) != _text(now[0]):  # another probe (no Flickr8k here): other numbers
        pytest.skip(f"committed on {_text(then[0]).strip()}, run on {_text(now[0]).strip()}")
    for old, new in zip(then, now, strict=False):
        assert _same_print(_text(old), _text(new)), old.source[:80]


NUMBER = re.compile(r"-?\d+\.(\d+)(?:e([-+]?\d+))?")


def _same_print(old: str, new: str) -> bool:
    """Two printouts of the same code say the same: equal words, and numbers equal to within one
    unit of their last printed digit (the last bits of a float product can differ between CPUs
    and thread counts); wall times and temporary folders aside."""
    old, new = (re.sub(r"time: [0-9.]+ s", "time: ? s", t) for t in (old, new))
    old, new = (re.sub(r"/tmp/[^\s'\"]+", "/tmp/?", t) for t in (old, new))
    if NUMBER.sub("#", old) != NUMBER.sub("#", new):
        return False
    for a, b in zip(NUMBER.finditer(old), NUMBER.finditer(new), strict=True):
        unit = 10.0 ** (int(a.group(2) or 0) - len(a.group(1)))
        if abs(float(a.group(0)) - float(b.group(0))) > 1.01 * unit:
            return False
    return True


def test_same_print_allows_the_last_digit_only() -> None:
    assert _same_print("z 8.8, p 1.1e-50, time: 66.0 s", "z 8.9, p 1.2e-50, time: 3.1 s")
    assert not _same_print("z 8.8", "z 9.0")
    assert not _same_print("below every real pair", "NOT below every real pair")


if __name__ == "__main__":  # python tests/test_notebooks.py [NAME ...]: execute and write back
    os.environ.update(_environment())
    for p in COMMITTED:
        if len(sys.argv) == 1 or p.name in sys.argv[1:]:
            write(p)
            print(f"wrote {p} ({p.stat().st_size} bytes)")
