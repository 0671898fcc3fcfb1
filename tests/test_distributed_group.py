"""Under torchrun, extraction creates a process group only when asked, and removes what it made
(issue 8, item 7): a trainer started later in the same process must not inherit a gloo group."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _launch import launch

TESTS = Path(__file__).parent

SCRIPT = """
import json, os, sys
sys.path.insert(0, {tests!r})
import torch
import torch.distributed as dist
from test_features_support import TinyImageEncoder, make_probe
from alignkit.features import extract_features

torch.set_num_threads(1)
probe = make_probe({probe!r}, 12)  # 3 batches of 4
report = {{}}

def run(name, **kw):
    enc = TinyImageEncoder()
    kw.update(batch_size=4, num_workers=0, cache=False, progress=False)
    fs = extract_features(enc, probe, **kw)
    report[name] = {{"calls": enc.calls, "group_after": dist.is_initialized(), "n": fs.n}}

run("default")                   # not asked: no group, every rank does every batch
run("asked", distributed=True)   # asked: a group for this call only
run("asked_again", distributed=True)
dist.init_process_group("gloo")  # the caller's own group: used, and left as it was
run("own_group")
run("own_group_declined", distributed=False)
dist.destroy_process_group()
with open(os.path.join({out!r}, "rank" + os.environ["RANK"] + ".json"), "w") as fh:
    json.dump(report, fh)
"""


@pytest.mark.distributed
def test_extraction_makes_a_process_group_only_when_asked_and_removes_it(tmp_path: Path) -> None:
    script = tmp_path / "run.py"
    script.write_text(
        SCRIPT.format(tests=str(TESTS), probe=str(tmp_path / "img"), out=str(tmp_path))
    )
    proc = launch([str(script)])
    err = proc.stderr
    assert proc.returncode == 0, err[-3000:]
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert "every rank extracts every row" in err  # the unsharded run says so
    for report in reports:
        assert all(step["n"] == 12 for step in report.values())
        assert report["default"] == {"calls": 3, "group_after": False, "n": 12}
        assert report["asked"]["group_after"] is False
        assert report["asked_again"]["group_after"] is False
        assert report["own_group"]["group_after"] is True
        assert report["own_group_declined"] == {"calls": 3, "group_after": True, "n": 12}
    for step in ("asked", "asked_again", "own_group"):  # split: 1 and 2 of the 3 batches
        assert sorted(r[step]["calls"] for r in reports) == [1, 2], step
