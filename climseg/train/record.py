"""The run folder's record of a training run: ``run.json`` (what ran, on what) and
``metrics.jsonl`` (one JSON line per split and epoch), written from rank 0.

:class:`RunRecord` is a listener on the loop's events (:mod:`climseg.train.events`): at the
run's start it writes ``run.json`` (the set-up's description plus the start time), and it appends
each epoch's training row and each validation row to ``metrics.jsonl`` as the loop reports them
(non-finite numbers written as ``null``). A resumed run first drops the lines written after its
checkpoint (:func:`truncate_metrics`), so the file always matches the weights.
"""

import datetime
import json
import math
import os

from climseg.output import append_line, atomic_path, write_json
from climseg.train.events import TrainingListener


class RunRecord(TrainingListener):
    """Writes ``run.json`` and ``metrics.jsonl`` into the run folder ``out``; ``info`` is the
    set-up's description for ``run.json`` (options, data, device, precision, sizes)."""

    def __init__(self, out, info):
        self.out = out
        self.info = info
        self.metrics_path = os.path.join(out, "metrics.jsonl")

    def run_start(self, trainer):
        write_json(
            os.path.join(self.out, "run.json"),
            dict(self.info, started=datetime.datetime.now().isoformat(timespec="seconds")),
        )

    def train_stop(self, row):
        append_metrics(self.metrics_path, row)

    def eval_stop(self, row):
        append_metrics(self.metrics_path, row)


def append_metrics(path, row):
    """Append ``row`` (a dict) to the metrics file ``path`` as one JSON line; NaN and infinities
    become ``null``."""
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
    append_line(path, json.dumps(clean))


def truncate_metrics(path, step):
    """Drop the lines of the metrics file ``path`` written after optimizer step ``step`` (those of
    a run that went on past the checkpoint a resumed run starts from). No file: nothing to do."""
    if not os.path.isfile(path):
        return
    with open(path) as f:
        rows = [line for line in f if line.strip() and json.loads(line).get("step", 0) <= step]
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.writelines(rows)
