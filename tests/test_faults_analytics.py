"""Fault injection on the analytics side (issue 24): ``label``, ``track``, ``analyze`` and
``convert`` (and the option checks of ``generate``) hold the promise of tests/test_faults.py.

* A hostile-case table: every input or option a user can fix, run through the command line,
  ends in one line and exit status 2 (or in a correct result), and leaves nothing written.
* One output discipline: the output checked first (a file, under a file, read-only, a full
  disk), one run at a time per folder (concurrent runs into one ``--out``), a rerun replaces the
  earlier run as a whole, and kills (SIGTERM, SIGKILL) at several points while ``--out`` holds an
  earlier run never leave the two runs mixed: the folder holds one run or the other, and a run
  killed half-way through its renames is refused by readers until the next run finishes it.
* Worker processes stop with the command: SIGTERM, Ctrl-C (SIGINT to the process group) and
  SIGKILL during ``label --workers 2`` leave no worker writing and no temporary behind; a worker
  killed on its own ends the command with one line.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import netCDF4
import numpy as np
import pytest
import torch
from test_faults import KILLED_WRITER, check_one_line_error, full_fs, no_temporaries, read_only  # noqa: F401

from climseg.cli import main
from climseg.cli.label import THRESHOLDS
from climseg.errors import DataError, OutputError
from climseg.output import OutputBatch, RunLock, check_complete, max_workers, remove_stale_scratch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
QUIET = ["--no-progress"]


def quiet(argv):
    """``argv`` with ``--no-progress`` where the command has a progress bar."""
    return list(argv) + (QUIET if argv[0] in ("label", "track", "generate", "predict", "stage") else [])


# ----------------------------------------------------------------------------- inputs


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A generated series of 3 daily files (12 steps, 32 x 48), its labels, their tracks, and
    ClimateNet weights with their config.json."""
    from test_cgnet import CONFIG, random_climatenet_state

    from climseg.analytics.label import label
    from climseg.analytics.track import track
    from climseg.data.timeseries import generate_timeseries

    root = tmp_path_factory.mktemp("analytics-faults")
    generate_timeseries(str(root / "series"), 12, 6.0, 32, 48, 3, workers=1, progress=False)
    files = sorted(str(p) for p in (root / "series").glob("*.nc"))
    label(files, str(root / "masks"), progress=False, log=lambda *a: None)
    masks = sorted(str(p) for p in (root / "masks").glob("*_mask.nc"))
    track(masks, str(root / "events"), progress=False, log=lambda *a: None)
    (root / "cn").mkdir()
    torch.save(random_climatenet_state(4, 3, 2, 2), root / "cn" / "weights.pth")
    (root / "cn" / "config.json").write_text(json.dumps(CONFIG))
    return dict(
        root=root, files=files, masks=masks, events=str(root / "events"), weights=str(root / "cn" / "weights.pth")
    )


def visible(folder):
    """{name: bytes} of the files of ``folder`` a user sees (not the hidden lock, manifests, staging)."""
    out = {}
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if not name.startswith(".") and os.path.isfile(path):
            with open(path, "rb") as f:
                out[name] = f.read()
    return out


def state(folder):
    """What a run wrote into ``folder``, comparable between two runs with the same inputs and
    options: the file names, the JSON files (without timings and absolute paths), the tables, the
    arrays of the netCDF files; maps by name only."""
    out = {}
    for name, data in visible(folder).items():
        if name.endswith(".json"):
            obj = json.loads(data)
            for key in ("seconds", "events_folder"):
                obj.pop(key, None)
            out[name] = obj
        elif name.endswith(".nc"):
            with netCDF4.Dataset(os.path.join(folder, name)) as ds:
                ds.set_auto_mask(False)
                out[name] = {v: np.asarray(ds[v][:]).tobytes() for v in ds.variables}
        elif name.endswith(".csv"):
            out[name] = data
        else:
            out[name] = None
    return out


def edit_netcdf(path, **attributes):
    with netCDF4.Dataset(path, "a") as ds:
        for k, v in attributes.items():
            ds.setncattr(k, v)


def grid_file(path, h, w, steps=2):
    """A CAM5-named netCDF file of ``steps`` steps on an ``h`` x ``w`` grid."""
    from climseg.data.netcdf import write_cam5_netcdf

    rng = np.random.default_rng(0)
    data = (rng.standard_normal((steps, h, w, 16)) + 100).astype(np.float32)
    lat = np.linspace(-60, 60, h) if h > 1 else np.array([10.0])
    write_cam5_netcdf(str(path), data, lat, np.arange(w) * 360.0 / w)
    return str(path)


def empty_file(path):
    path.write_bytes(b"")
    return str(path)


def empty_mask(path, like):
    """A mask file on the grid of ``like`` whose time axis has length 0."""
    with netCDF4.Dataset(like) as s, netCDF4.Dataset(path, "w") as d:
        d.createDimension("time", None)
        d.createDimension("lat", s.dimensions["lat"].size)
        d.createDimension("lon", s.dimensions["lon"].size)
        d.createVariable("time", "f8", ("time",)).units = "hours since 2000-01-01"
        d.createVariable("lat", "f8", ("lat",))[:] = s["lat"][:]
        d.createVariable("lon", "f8", ("lon",))[:] = s["lon"][:]
        d.createVariable("mask", "u1", ("time", "lat", "lon"))
    return str(path)


# ----------------------------------------------------------------------------- the hostile-case table
#
# Each case: (id, setup(tmp, inputs) -> argv, fragments of the one error line). ``OUT`` in argv is
# the output location, which must not exist afterwards; ``EV`` is a copy of the events folder
# that the setup may edit, which must be unchanged afterwards.


def events_copy(tmp, inputs, edit=None):
    ev = tmp / "ev"
    shutil.copytree(inputs["events"], ev)
    if edit is not None:
        edit(ev)
    return ev


def track_json(change):
    def edit(ev):
        meta = json.loads((ev / "track.json").read_text())
        replaced = change(meta)
        (ev / "track.json").write_text(json.dumps(meta if replaced is None else replaced))

    return edit


def table(name, change):
    def edit(ev):
        lines = (ev / name).read_text().splitlines()
        (ev / name).write_text("\n".join(change(lines)) + "\n")

    return edit


def cell(column, value, name="events.csv"):
    """Every row's ``column`` of table ``name`` set to ``value``."""

    def change(lines):
        k = lines[0].split(",").index(column)
        return [lines[0]] + [",".join(value if i == k else c for i, c in enumerate(r.split(","))) for r in lines[1:]]

    return table(name, change)


def analyze_case(edit, *fragments):
    return lambda tmp, i: (["analyze", str(events_copy(tmp, i, edit)), "--out", "OUT", "--no-maps"], fragments)


def occupancy(change):
    def edit(ev):
        path = ev / "occupancy.nc"
        change(path)

    return edit


def foreign_occupancy(path):
    path.unlink()
    with netCDF4.Dataset(path, "w") as ds:
        ds.total_steps = 12
        for dim, n in (("class", 3), ("lat", 5), ("lon", 7)):
            ds.createDimension(dim, n)
        ds.createVariable("lat", "f8", ("lat",))[:] = np.linspace(-10, 10, 5)
        ds.createVariable("lon", "f8", ("lon",))[:] = np.arange(7.0)
        ds.createVariable("steps_in_event", "i4", ("class", "lat", "lon"))[:] = 0


def climatenet_case(config, *fragments):
    def setup(tmp, i):
        (tmp / "cn").mkdir()
        shutil.copy(i["weights"], tmp / "cn" / "weights.pth")
        (tmp / "cn" / "config.json").write_text(config)
        return ["convert", "--from", "climatenet", str(tmp / "cn" / "weights.pth"), "OUT"], fragments

    return setup


def weights_case(obj, *fragments):
    def setup(tmp, i):
        path = tmp / "w.pth"
        if isinstance(obj, bytes):
            path.write_bytes(obj)
        else:
            torch.save(obj, path)
        shutil.copy(os.path.join(os.path.dirname(i["weights"]), "config.json"), tmp / "config.json")
        return ["convert", "--from", "climatenet", str(path), "OUT"], fragments

    return setup


def nan_weights():
    from test_cgnet import random_climatenet_state

    state = random_climatenet_state(4, 3, 2, 2)
    key = sorted(state)[3]
    state[key] = state[key] * float("nan")
    return state


FIELDS = '{"TMQ": {"mean": 1, "std": 1}, "U850": {"mean": 1, "std": 1}, "V850": {"mean": 1, "std": 1}, '
FIELDS += '"PSL": {"mean": 1, "std": 1}}'
SMALL = ["--height", "16", "--width", "16"]
HOSTILE = [
    # label
    ("label-1xN-grid", lambda t, i: (["label", grid_file(t / "g.nc", 1, 48), "--out", "OUT"], ["1 x 48", "2 x 2"])),
    ("label-Nx1-grid", lambda t, i: (["label", grid_file(t / "g.nc", 32, 1), "--out", "OUT"], ["32 x 1"])),
    (
        "label-environment-1e12",
        lambda t, i: (["label", *i["files"], "--out", "OUT", "--tc-environment-km", "1e12"], ["at most 5000 km"]),
    ),
    ("label-core-1e9", lambda t, i: (["label", *i["files"], "--out", "OUT", "--tc-core-km", "1e9"], ["--tc-core-km"])),
    ("label-workers-1000", lambda t, i: (["label", *i["files"], "--out", "OUT", "--workers", "1000"], ["at most"])),
    ("label-workers-0", lambda t, i: (["label", *i["files"], "--out", "OUT", "--workers", "0"], ["--workers 0"])),
    (
        "label-validation-nan",
        lambda t, i: (
            ["label", *i["files"], "--out", "OUT", "--dataset", str(t / "ds"), "--validation-fraction", "nan"],
            ["--validation-fraction nan"],
        ),
    ),
    ("label-method", lambda t, i: (["label", *i["files"], "--out", "OUT", "--method", "tc+xx"], ["--method tc+xx"])),
    # track
    (
        "track-time-axis-0",
        lambda t, i: (["track", empty_mask(t / "e.nc", i["masks"][0]), "--out", "OUT"], ["time axis has length 0"]),
    ),
    ("track-workers-1000", lambda t, i: (["track", *i["masks"], "--out", "OUT", "--workers", "1000"], ["at most"])),
    (
        "track-look-ahead-1e9",
        lambda t, i: (["track", *i["masks"], "--out", "OUT", "--look-ahead", "1000000000"], ["--look-ahead"]),
    ),
    (
        "track-size-inf",
        lambda t, i: (["track", *i["masks"], "--out", "OUT", "--tc-min-size", "1e400px"], ["is not a size"]),
    ),
    ("track-0-byte-mask", lambda t, i: (["track", empty_file(t / "m.nc"), "--out", "OUT"], ["m.nc", "readable"])),
    # analyze: edited, foreign and mixed events folders
    ("analyze-track-json-list", analyze_case(track_json(lambda m: [1, 2]), "track.json", "JSON list")),
    ("analyze-no-first-time", analyze_case(track_json(lambda m: m.pop("first_time") and None), "'first_time'")),
    ("analyze-bad-first-time", analyze_case(track_json(lambda m: m.update(first_time="yesterday")), "first_time")),
    ("analyze-interval-text", analyze_case(track_json(lambda m: m.update(interval_hours="3h")), "interval_hours")),
    ("analyze-interval-negative", analyze_case(track_json(lambda m: m.update(interval_hours=-3)), "interval_hours")),
    ("analyze-steps-text", analyze_case(track_json(lambda m: m.update(steps="x")), "'steps'")),
    ("analyze-grid", analyze_case(track_json(lambda m: m.update(grid=[1])), "'grid'")),
    ("analyze-version", analyze_case(track_json(lambda m: m.update(version=7)), "version 7")),
    (
        "analyze-span",
        analyze_case(track_json(lambda m: m.update(first_time="0001-01-01 00:00:00")), "spans more than"),
    ),
    ("analyze-track-json-text", analyze_case(lambda ev: (ev / "track.json").write_text("not json"), "unreadable")),
    ("analyze-track-json-empty", analyze_case(lambda ev: (ev / "track.json").write_text(""), "unreadable")),
    ("analyze-no-track-json", analyze_case(lambda ev: (ev / "track.json").unlink(), "no track.json")),
    ("analyze-class", analyze_case(cell("class", "hurricane"), "events.csv", "class 'hurricane'")),
    ("analyze-latitude-text", analyze_case(cell("genesis_lat", "abc"), "genesis_lat 'abc'")),
    ("analyze-latitude-200", analyze_case(cell("genesis_lat", "200"), "genesis_lat '200'")),
    ("analyze-time", analyze_case(cell("first_time", "soon"), "first_time 'soon'")),
    ("analyze-step", analyze_case(cell("last_step", "99"), "last_step '99'")),
    ("analyze-lifetime", analyze_case(cell("lifetime_hours", "-5"), "lifetime_hours '-5'")),
    ("analyze-pixels", analyze_case(cell("pixels", "1.5", "tracks.csv"), "tracks.csv", "pixels '1.5'")),
    ("analyze-track-id", analyze_case(cell("id", "999", "tracks.csv"), "tracks.csv", "id 999")),
    ("analyze-duplicate-id", analyze_case(cell("id", "1"), "appears twice")),
    ("analyze-short-rows", analyze_case(table("events.csv", lambda r: [r[0]] + [x[:20] for x in r[1:]]), "fields")),
    ("analyze-no-header", analyze_case(table("events.csv", lambda r: r[1:]), "columns")),
    ("analyze-events-empty", analyze_case(lambda ev: (ev / "events.csv").write_text(""), "no header line")),
    ("analyze-fewer-events", analyze_case(table("events.csv", lambda r: r[:-1]), "track.json counts")),
    ("analyze-binary-events", analyze_case(lambda ev: (ev / "events.csv").write_bytes(b"\xca" * 300), "not a text")),
    (
        "analyze-binary-tracks",
        analyze_case(lambda ev: (ev / "tracks.csv").write_bytes(b"\xff\xfe" + os.urandom(300)), "tracks.csv"),
    ),
    ("analyze-no-tracks", analyze_case(lambda ev: (ev / "tracks.csv").unlink(), "tracks.csv: missing")),
    ("analyze-occupancy-empty", analyze_case(occupancy(lambda p: p.write_bytes(b"")), "occupancy.nc", "readable")),
    ("analyze-occupancy-text", analyze_case(occupancy(lambda p: p.write_text("hello")), "occupancy.nc")),
    (
        "analyze-occupancy-foreign",
        analyze_case(
            occupancy(lambda p: (p.unlink(), shutil.copy(sorted(p.parent.glob("*_event_id.nc"))[0], p))),
            "occupancy.nc",
            "no variable 'steps_in_event'",
        ),
    ),
    (
        "analyze-occupancy-total",
        analyze_case(occupancy(lambda p: edit_netcdf(p, total_steps=np.int32(-1))), "total_steps"),
    ),
    ("analyze-occupancy-grid", analyze_case(occupancy(foreign_occupancy), "5 x 7 grid", "two runs")),
    ("analyze-no-folder", lambda t, i: (["analyze", str(t / "nope"), "--out", "OUT"], ["no track.json"])),
    # convert
    ("convert-0-byte", weights_case(b"", "is empty")),
    (
        "convert-no-source",
        lambda t, i: (["convert", "--from", "climatenet", str(t / "no.pth"), "OUT"], ["no.pth: no such file"]),
    ),
    (
        "convert-folder-source",
        lambda t, i: (["convert", "--to", "mlperf-deepcam", str(t), "OUT"], ["is a folder, not a weights file"]),
    ),
    ("convert-text", weights_case(b"hello", "not a readable PyTorch weights file")),
    ("convert-list", weights_case([1, 2], "expected a state_dict")),
    ("convert-int-keys", weights_case({1: torch.zeros(1)}, "expected a state_dict")),
    ("convert-empty-dict", weights_case({}, "not a ClimateNet")),
    ("convert-nan-weights", weights_case(nan_weights(), "holds NaN or Inf")),
    ("convert-config-empty", climatenet_case("", "config.json", "not JSON")),
    ("convert-config-list", climatenet_case("[]", "config.json", "'fields'")),
    ("convert-config-labels-5", climatenet_case('{"fields": ' + FIELDS + ', "labels": 5}', "'labels' is 5")),
    ("convert-config-labels-null", climatenet_case('{"fields": ' + FIELDS + ', "labels": null}', "'labels'")),
    ("convert-config-labels-text", climatenet_case('{"fields": ' + FIELDS + ', "labels": "abc"}', "'labels'")),
    (
        "convert-config-mean-true",
        climatenet_case('{"fields": ' + FIELDS.replace('"mean": 1', '"mean": true', 1) + "}", "numeric"),
    ),
    (
        "convert-onto-its-config",
        lambda t, i: (
            [
                "convert",
                "--from",
                "climatenet",
                i["weights"],
                os.path.join(os.path.dirname(i["weights"]), "config.json"),
            ],
            ["also a file this conversion reads"],
        ),
    ),
    # generate
    (
        "generate-cyclones-nan",
        lambda t, i: (["generate", "OUT", "--samples", "2", *SMALL, "--cyclones", "nan"], ["nan"]),
    ),
    (
        "generate-rivers-inf",
        lambda t, i: (["generate", "OUT", "--samples", "2", *SMALL, "--rivers", "inf"], ["--rivers"]),
    ),
    (
        "generate-seed-negative",
        lambda t, i: (["generate", "OUT", "--samples", "2", *SMALL, "--seed", "-1"], ["--seed -1"]),
    ),
    (
        "generate-series-seed-negative",
        lambda t, i: (["generate", "OUT", "--timesteps", "2", *SMALL, "--seed", "-1"], ["--seed -1"]),
    ),
    (
        "generate-span",
        lambda t, i: (["generate", "OUT", "--timesteps", "2", "--interval", "100000000d", *SMALL], ["years"]),
    ),
    (
        "generate-workers",
        lambda t, i: (["generate", "OUT", "--samples", "2", *SMALL, "--workers", "1000"], ["at most"]),
    ),
    (
        "generate-grid-memory",
        lambda t, i: (["generate", "OUT", "--samples", "2", "--height", "1600000", "--width", "1600000"], ["GiB"]),
    ),
]
# every numeric threshold of label: NaN, negative and infinite values
for _field, _type, _, _ in THRESHOLDS:
    if _type is float:
        for _value in ("nan", "-1", "inf"):
            _flag = "--" + _field.replace("_", "-")
            HOSTILE.append(
                (
                    f"label{_flag}={_value}",
                    lambda t, i, flag=_flag, value=_value: (
                        ["label", *i["files"], "--out", "OUT", flag, value],
                        [flag],
                    ),
                )
            )


@pytest.mark.parametrize("case", [c for _, c in HOSTILE], ids=[name for name, _ in HOSTILE])
def test_hostile_case_is_one_line_and_writes_nothing(case, inputs, tmp_path, capsys):
    argv, fragments = case(tmp_path, inputs)
    out = tmp_path / "out"
    argv = [str(out) if a == "OUT" else a for a in argv]
    ev = tmp_path / "ev"
    before = visible(ev) if ev.exists() else None
    code = main(quiet(argv))
    check_one_line_error(capsys, code, *fragments)
    assert not out.exists()
    if before is not None:
        assert visible(ev) == before  # analyze never changes the folder it reads
    no_temporaries(tmp_path)
    assert visible(inputs["events"]) and os.path.isfile(inputs["weights"])


def test_a_64x1_grid_gets_a_mask_and_a_map(tmp_path, capsys):
    """predict's map of a grid with one column (or one row) is drawn, without outlines."""
    from climseg.constants import CHANNELS
    from climseg.models import DeepLabV3Plus
    from climseg.train.checkpoint import save_checkpoint

    net = DeepLabV3Plus("tiny", in_channels=len(CHANNELS), num_classes=3)
    ckpt = str(tmp_path / "tiny.pt")
    spec = dict(config="tiny", in_channels=len(CHANNELS), num_classes=3, norm="batch", state_dict=net.state_dict())
    data = dict(channels=list(CHANNELS), normalization="minmax", shift=torch.zeros(16), scale=torch.full((16,), 1e-3))
    save_checkpoint(ckpt, dict(model=spec, data=data))
    for h, w in ((64, 1), (1, 64)):
        out = tmp_path / f"p{h}x{w}"
        assert main(quiet(["predict", ckpt, grid_file(tmp_path / f"g{h}x{w}.nc", h, w, 1), "--out", str(out)])) == 0
        assert (out / f"g{h}x{w}.png").stat().st_size > 0
    capsys.readouterr()


def test_export_of_a_checkpoint_missing_a_key_is_refused(tmp_path, capsys):
    from climseg.models import DeepLabV3Plus
    from climseg.train.checkpoint import save_checkpoint

    state = DeepLabV3Plus("deepcam", in_channels=16, num_classes=3).state_dict()
    gone = sorted(state)[7]
    del state[gone]
    spec = dict(config="deepcam", in_channels=16, num_classes=3, norm="batch", state_dict=state)
    save_checkpoint(str(tmp_path / "short.pt"), dict(model=spec, data=dict(channels=[])))
    code = main(["convert", "--to", "mlperf-deepcam", str(tmp_path / "short.pt"), str(tmp_path / "ref.cpt")])
    check_one_line_error(capsys, code, "short.pt", f"lacks {gone}", "not exported")
    assert sorted(os.listdir(tmp_path)) == ["short.pt"]


def test_convert_onto_its_own_source_keeps_the_weights(inputs, tmp_path, capsys):
    weights = tmp_path / "weights.pth"
    shutil.copy(inputs["weights"], weights)
    shutil.copy(os.path.join(os.path.dirname(inputs["weights"]), "config.json"), tmp_path / "config.json")
    before = weights.read_bytes()
    for out in (weights, tmp_path / "." / "weights.pth"):
        code = main(["convert", "--from", "climatenet", str(weights), str(out)])
        check_one_line_error(capsys, code, "is also a file this conversion reads")
    assert weights.read_bytes() == before
    assert main(["convert", "--from", "climatenet", str(weights), str(tmp_path / "cgnet.pt")]) == 0
    assert sorted(os.listdir(tmp_path)) == ["cgnet.pt", "config.json", "weights.pth"]  # the lock went with the run


# ----------------------------------------------------------------------------- output locations


def test_output_locations_are_checked_before_the_work(inputs, tmp_path, read_only, capsys):  # noqa: F811
    afile = tmp_path / "afile"
    afile.write_text("keep")
    commands = {
        "label": ["label", *inputs["files"]],
        "track": ["track", *inputs["masks"]],
        "analyze": ["analyze", inputs["events"]],
    }
    for argv in commands.values():
        for out, fragment in (
            (afile, "is a file, not a folder"),
            (afile / "sub", "is a file, not a folder"),
            (read_only / "out", "cannot write into"),
        ):
            code = main(quiet(argv + ["--out", str(out)]))
            check_one_line_error(capsys, code, str(out), fragment)
    code = main(["convert", "--from", "climatenet", inputs["weights"], str(read_only / "c.pt")])
    check_one_line_error(capsys, code, "cannot write into")
    assert afile.read_text() == "keep" and os.listdir(read_only) == []


def test_full_disk_is_one_line_and_leaves_nothing(inputs, full_fs, capsys):  # noqa: F811
    """label used to die by SIGBUS (memory-mapped scratch on the full file system)."""
    ballast = full_fs / "ballast"
    ballast.write_bytes(os.urandom(150_000))
    for argv in (
        ["label", *inputs["files"], "--workers", "2"],
        ["track", *inputs["masks"], "--workers", "2"],
        ["analyze", inputs["events"]],
    ):
        code = main(quiet(argv + ["--out", str(full_fs / "out")]))
        check_one_line_error(capsys, code, "no space left on device")
        assert sorted(os.listdir(full_fs)) == ["ballast"]


# ----------------------------------------------------------------------------- runs replace runs


def test_a_rerun_with_fewer_inputs_replaces_the_earlier_run(inputs, tmp_path, capsys):
    out = tmp_path / "events"
    assert main(quiet(["track", *inputs["masks"], "--out", str(out)])) == 0
    assert main(quiet(["track", *inputs["masks"][:2], "--out", str(out)])) == 0
    meta = json.loads((out / "track.json").read_text())
    expected = set(meta["event_files"]) | {"events.csv", "tracks.csv", "occupancy.nc", "track.json"}
    assert set(visible(out)) - {"events.parquet", "tracks.parquet"} == expected and len(meta["event_files"]) == 2
    # a folder written before runs kept a manifest: track.json names the earlier run's files
    assert main(quiet(["track", *inputs["masks"], "--out", str(out)])) == 0
    os.unlink(out / ".climseg-run-track.json")
    assert main(quiet(["track", *inputs["masks"][1:], "--out", str(out)])) == 0
    assert len([n for n in visible(out) if n.endswith("_event_id.nc")]) == 2
    # label and analyze alike; another command's files in the same folder are left alone
    assert main(quiet(["label", *inputs["files"], "--out", str(out)])) == 0
    assert main(quiet(["label", *inputs["files"][:1], "--out", str(out)])) == 0
    assert len([n for n in visible(out) if n.endswith("_mask.nc")]) == 1
    assert len([n for n in visible(out) if n.endswith("_event_id.nc")]) == 2
    code = main(quiet(["analyze", str(out), "--out", str(out), "--no-maps"]))  # summary.json is label's
    check_one_line_error(capsys, code, "summary.json", "climseg label run")
    assert main(quiet(["analyze", str(out), "--out", str(tmp_path / "a")])) == 0
    assert main(quiet(["analyze", str(out), "--out", str(tmp_path / "a"), "--no-maps"])) == 0
    assert set(visible(tmp_path / "a")) == {"climatology.nc", "summary.json"}
    capsys.readouterr()


def test_output_batch_refuses_its_inputs_and_keeps_live_temporaries(tmp_path):
    (tmp_path / "in.nc").write_text("input")
    with pytest.raises(OutputError, match="one of this run's inputs"):
        with OutputBatch(tmp_path, command="track", inputs=[tmp_path / "in.nc"]) as batch:
            batch.check(["in.nc"])
    assert (tmp_path / "in.nc").read_text() == "input"
    # temporaries of a process that still runs are left alone, those of a dead one removed
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = tmp_path / f".climseg-batch.{sleeper.pid}-abcdefgh.tmp"
        live.mkdir()
        dead = tmp_path / f".x.nc.{_dead_pid()}-abcdefgh.tmp"
        dead.write_text("stale")
        with RunLock(tmp_path):
            assert remove_stale_scratch(tmp_path) == [dead.name]
        assert live.is_dir() and not dead.exists()
    finally:
        sleeper.kill()
        sleeper.wait()


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_readers_and_writers_exclude_each_other(tmp_path):
    folder = tmp_path / "f"
    with RunLock(folder):
        (folder / "masks.nc").write_text("a run's file")  # a folder a run wrote into keeps its lock file
        with pytest.raises(OutputError, match="a climseg run is writing into this folder"):
            RunLock(folder, shared=True).acquire()
    with RunLock(folder, shared=True), RunLock(folder, shared=True):  # readers share
        with pytest.raises(OutputError, match="another climseg run is reading this folder"):
            RunLock(folder).acquire()
    with RunLock(folder):
        pass


# ----------------------------------------------------------------------------- concurrent runs and kills


def _script_env():
    return dict(
        os.environ,
        PYTHONWARNINGS="ignore",
        PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH", "")) if p),
    )


def _paused(tmp_path, marker, pause, *args):
    """``climseg ARGS`` in a child process that stops for ``pause`` s at the rename onto ``marker``
    (see tests/test_faults.py's KILLED_WRITER), once it is there."""
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, marker, str(pause), *quiet(args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_script_env(),
        cwd=tmp_path,
    )
    line = proc.stdout.readline()
    assert line.strip() == "WRITING", (line, proc.stderr.read() if proc.poll() is not None else "")
    return proc


def _runs(inputs):
    """Per command: (argv of the earlier run, argv of the later one with fewer files, a reader of
    the folder's kind that must refuse a half-renamed folder)."""
    return {
        "label": (["label", *inputs["files"]], ["label", *inputs["files"][:2], "--method", "ar"]),
        "track": (["track", *inputs["masks"]], ["track", *inputs["masks"][:2], "--min-steps", "1"]),
        "analyze": (["analyze", inputs["events"]], ["analyze", inputs["events"], "--no-maps"]),
    }


@pytest.mark.parametrize("command", ["label", "track"])
def test_concurrent_runs_into_one_out(command, inputs, tmp_path, capsys):
    first, second = _runs(inputs)[command]
    out = tmp_path / "out"
    # one run holds the folder (paused as it writes its summary): the other is refused at once
    proc = _paused(tmp_path, "=summary.json" if command == "label" else "=track.json", 5, *first, "--out", str(out))
    code = main(quiet(second + ["--out", str(out)]))
    check_one_line_error(capsys, code, str(out), "another climseg run is writing into this folder")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    main(quiet(first + ["--out", str(tmp_path / "ref")]))
    assert state(out) == state(tmp_path / "ref")
    # two started together: each ends whole or refused with one line, the folder holds one run
    out = tmp_path / "race"
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "climseg", *quiet([*argv, "--out", str(out)])],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_script_env(),
        )
        for argv in (first, second)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    results = [(p.returncode, err) for p, (_, err) in zip(procs, outputs)]
    for code, err in results:
        assert code == 0 or (code == 2 and "another climseg run" in err and len(err.strip().splitlines()) == 1), err
    assert main(quiet(second + ["--out", str(tmp_path / "ref2")])) == 0
    refs = [state(tmp_path / "ref"), state(tmp_path / "ref2")]
    winners = [ref for ref, (code, _) in zip(refs, results) if code == 0]
    assert winners and state(out) in winners  # both succeed only one after the other: the later one's
    no_temporaries(out)
    capsys.readouterr()


@pytest.fixture(scope="module")
def runs(inputs, tmp_path_factory):
    """``runs(command)``: a folder holding the earlier run of ``command`` (made once, copied by each
    test); ``runs(command, later=True)``: the state of the later run, made once into its own folder."""
    made = {}

    def run(command, later=False):
        if (command, later) not in made:
            folder = tmp_path_factory.mktemp(f"{command}-{'later' if later else 'earlier'}")
            shutil.rmtree(folder)
            assert main(quiet(_runs(inputs)[command][int(later)] + ["--out", str(folder)])) == 0
            made[command, later] = state(folder) if later else folder
        return made[command, later]

    return run


KILL_POINTS = {
    # the point: (the rename to pause at, seconds, what SIGKILL there leaves: the earlier run whole,
    # the two runs mixed, or the later run's files before its manifest); a SIGTERM during the
    # renames is held until they are done, so the pause there is short
    "working": ("={summary}", 30, "earlier"),
    "renaming": ("out/{first}", 3, "mixed"),
    "manifest": ("out/.climseg-run-{command}.json", 3, "later-unfinished"),
}
SUMMARY = {"label": "summary.json", "track": "track.json", "analyze": "summary.json"}
FIRST = {"label": None, "track": "events.csv", "analyze": "climatology.nc"}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["TERM", "KILL"])
@pytest.mark.parametrize("point", list(KILL_POINTS))
@pytest.mark.parametrize("command", ["label", "track", "analyze"])
def test_kill_while_out_holds_an_earlier_run(command, point, sig, inputs, runs, tmp_path, capsys):
    earlier, later = _runs(inputs)[command]
    out = tmp_path / "out"
    shutil.copytree(runs(command), out)  # the earlier run's folder, lock file and manifest included
    old, new = state(out), runs(command, later=True)
    assert old != new
    first = FIRST[command] or sorted(n for n in new if n.endswith("_mask.nc"))[0]
    marker, pause, holds = KILL_POINTS[point]
    marker = marker.format(summary=SUMMARY[command], first=first, command=command)
    before = visible(out)
    proc = _paused(tmp_path, marker, pause, *later, "--out", str(out))
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    if sig == signal.SIGTERM:
        assert proc.returncode == 143 and err.strip().splitlines()[-1] == "climseg: terminated", err
        # a signal during the work leaves the earlier run; once the renames began, all of them are made
        assert state(out) == (old if holds == "earlier" else new)
        if holds == "earlier":
            assert visible(out) == before
        no_temporaries(out)
        return
    assert proc.returncode == -signal.SIGKILL
    if holds == "earlier":
        assert visible(out) == before  # only the killed run's staging folder is left, hidden
        check_complete(str(out))
    else:
        if holds == "later-unfinished":
            assert state(out) == new
        with pytest.raises(DataError, match="killed while it renamed"):
            check_complete(str(out))
        if command == "track":  # the reader of a track folder refuses it, with one line
            code = main(quiet(["analyze", str(out), "--out", str(tmp_path / "a")]))
            check_one_line_error(capsys, code, "killed while it renamed", "rerun climseg track")
        if command == "label":  # and the reader of a masks folder
            masks = sorted(str(p) for p in out.glob("*_mask.nc"))
            code = main(quiet(["track", *masks, "--out", str(tmp_path / "t")]))
            check_one_line_error(capsys, code, "killed while it renamed", "rerun climseg label")
            assert not (tmp_path / "t").exists()
    # the next run into the folder finishes or removes what the killed one left, then replaces it
    assert main(quiet(earlier + ["--out", str(out)])) == 0
    assert state(out) == old
    no_temporaries(out)
    assert [n for n in os.listdir(out) if n.startswith(".") and n != ".climseg-lock"] == [
        f".climseg-run-{command}.json"
    ]
    capsys.readouterr()


# ----------------------------------------------------------------------------- worker processes

SLOW_WORKER = textwrap.dedent("""
    import importlib, os, sys, time
    module, name = sys.argv[1].split(":")     # the function the workers run, e.g. label's label_step
    module = importlib.import_module(module)
    parent, real = os.getpid(), getattr(module, name)
    def slow(*args, **kwargs):        # the workers stop in their first call, the parent never does
        if os.getpid() != parent:
            os.write(1, f"WORKER {os.getpid()}\\n".encode())  # one write: two workers' lines never mix
            time.sleep(float(sys.argv[2]))
        return real(*args, **kwargs)
    setattr(module, name, slow)
    from climseg.cli import main
    sys.exit(main(sys.argv[3:]))
""")


def _gone(pid, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:  # a zombie of an ended process counts as gone
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(")")[-1].split()[0] == "Z":
                    return True
        except OSError:
            return True
        time.sleep(0.1)
    return False


WORKER_FUNCTION = {"label": "climseg.analytics.label:label_step", "track": "climseg.analytics.track:_scan_chunk"}


@pytest.mark.parametrize("how", ["TERM", "INT-to-group", "KILL", "worker-killed"])
@pytest.mark.parametrize("command", ["label", "track"])
def test_workers_stop_with_the_command(command, how, inputs, tmp_path):
    argv = [command, *(inputs["files"] if command == "label" else inputs["masks"]), "--out", str(tmp_path / "out")]
    out = tmp_path / "out"
    assert main(quiet(argv)) == 0
    before = visible(out)
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_WORKER, WORKER_FUNCTION[command], "60", *argv, "--workers", "2"] + QUIET,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_script_env(),
        start_new_session=True,  # its own process group, as a shell gives a job
    )
    word, worker = proc.stdout.readline().split()
    assert word == "WORKER"
    worker = int(worker)
    if how == "TERM":
        proc.send_signal(signal.SIGTERM)
    elif how == "INT-to-group":  # Ctrl-C in a terminal: every process of the job gets SIGINT
        os.killpg(proc.pid, signal.SIGINT)
    elif how == "KILL":
        proc.kill()
    else:
        os.kill(worker, signal.SIGKILL)  # e.g. the out-of-memory killer
    _, err = proc.communicate(timeout=120)
    assert _gone(worker), "a worker outlived its command"
    expected = {"TERM": 143, "INT-to-group": 130, "KILL": -signal.SIGKILL, "worker-killed": 2}[how]
    assert proc.returncode == expected, err
    if how == "worker-killed":
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "worker process ended unexpectedly" in lines[0], err
    time.sleep(0.5)
    assert visible(out) == before
    if how != "KILL":
        no_temporaries(out)
    assert main(quiet(argv)) == 0  # and a rerun cleans up
    no_temporaries(out)


def test_workers_are_bounded_by_the_cores():
    assert max_workers() >= 8
