"""``climseg predict --batch-size auto``: the batch by device and grid, and the option's values."""

import pytest

from climseg.cli import main
from climseg.predict import auto_batch_size


def test_auto_batch_size_by_device_and_grid():
    assert auto_batch_size("cpu", [(192, 288)]) == 4  # small grids: batches keep the per-call overheads down
    assert auto_batch_size("cpu", [(96, 144), (384, 576)]) == 1  # the largest grid decides
    assert auto_batch_size("cpu", [(768, 1152)]) == 1
    assert auto_batch_size("cpu", [(32, 48)]) == 4  # never more than 4
    assert auto_batch_size("cpu", []) == 4
    assert auto_batch_size("cuda", [(768, 1152)]) == 4


@pytest.mark.parametrize("value", ["two", "1.5", "0", "2000"])
def test_bad_batch_size_is_one_line(value, tmp_path, capsys):
    args = ["predict", str(tmp_path / "none.pt"), str(tmp_path / "none.nc"), "--out", str(tmp_path / "o")]
    try:
        code = main(args + ["--batch-size", value])
    except SystemExit as exc:  # argparse refuses a value that is not auto or a number
        code = exc.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and "batch-size" in err and "\n" not in err, err
    assert not (tmp_path / "o").exists()
