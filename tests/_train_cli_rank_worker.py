"""``alignkit train`` as one torchrun rank, recording which rank prepares and writes the run
folder: ``python _train_cli_rank_worker.py LOG ARGV...`` appends ``<RANK> <what>`` to LOG for
each call of the run-folder writers of :mod:`alignkit.training.pair`, then runs the command."""

from __future__ import annotations

import os
import sys

import alignkit.training.pair as pair
from alignkit.cli import main

log_path, argv = sys.argv[1], sys.argv[2:]


def _recorded(name: str):
    real = getattr(pair, name)

    def call(*args, **kwargs):
        with open(log_path, "a", encoding="utf-8") as f:
            f.write(f"{os.environ.get('RANK', '?')} {name}\n")
        return real(*args, **kwargs)

    return call


for _name in ("prepare_out_dir", "write_run_file", "_write_config", "end_out_dir"):
    setattr(pair, _name, _recorded(_name))
main(argv)
