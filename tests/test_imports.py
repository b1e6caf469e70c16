"""``import climseg`` is light and complete: subpackages load on first use, ``import climseg.nn``
pulls in no torch._dynamo, Triton or SciPy, and torch.compile still treats the backend probe as
a constant. Each check runs in a fresh interpreter (this one has imported everything already)."""

import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_fresh(code):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_import_climseg_nn_pulls_in_no_dynamo_triton_or_scipy():
    out = run_fresh("""
        import sys
        import climseg.nn
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("triton", "scipy")
                       or m == "torch._dynamo" or m.startswith("torch._dynamo."))
        print(" ".join(heavy) or "none")
    """)
    assert out.strip() == "none", f"import climseg.nn imported: {out.strip()[:500]}"


def test_data_loader_and_optim_import_without_scipy_or_dynamo():
    out = run_fresh("""
        import sys
        from climseg.data import FastLoader
        import climseg.optim, climseg.losses, climseg.metrics, climseg.ops
        print(sorted(m for m in sys.modules if m.split(".")[0] == "scipy" or m.startswith("torch._dynamo")))
    """)
    assert out.strip() == "[]"


def test_subpackages_and_documented_names_are_reachable_from_import_climseg():
    out = run_fresh("""
        import sys
        import climseg
        assert "climseg.nn" not in sys.modules and "torch" not in sys.modules
        missing = []
        for sub in ("nn", "ops", "distributed", "optim", "data", "losses", "metrics"):
            module = getattr(climseg, sub)
            for name in getattr(module, "__all__", []):
                if not hasattr(module, name):
                    missing.append(f"climseg.{sub}.{name}")
        assert climseg.nn.convert_model and climseg.data.generate_dataset and climseg.optim.LARC
        assert set(climseg.__all__) >= {"nn", "ops", "distributed", "optim", "data", "losses", "metrics"}
        print(missing)
    """)
    assert out.strip() == "[]"


def test_unknown_attribute_is_an_attribute_error():
    import climseg

    with pytest.raises(AttributeError, match="no_such_thing"):
        climseg.no_such_thing  # noqa: B018
    with pytest.raises(AttributeError):
        import climseg.data

        climseg.data.no_such_thing  # noqa: B018


def test_marked_constant_the_way_torch_marks_it():
    """climseg.ops.cuda marks its probe for Dynamo without importing Dynamo; the mark must be the
    one torch.compiler.assume_constant_result sets."""
    out = run_fresh("""
        import torch
        def f():
            return 1
        before = set(vars(f))
        torch.compiler.assume_constant_result(f)
        print(sorted(set(vars(f)) - before))
        from climseg.ops import cuda
        print(cuda._available._dynamo_marked_constant)
    """)
    assert out.split() == ["['_dynamo_marked_constant']", "True"]


def test_compile_fullgraph_after_a_light_import():
    """Dynamo imported only after climseg: the CUDA-kernel probe is still a constant (no graph break)."""
    out = run_fresh("""
        import os, sys
        import torch
        from climseg.ops import weighted_cross_entropy_with_counts
        from climseg.ops import cuda
        assert "torch._dynamo" not in sys.modules
        if not cuda.probe(torch.empty(0))[0]:
            print("skip: no CUDA-kernel emulation built")
            raise SystemExit
        x = torch.randn(2, 3, 5, 7, requires_grad=True)
        y = torch.randint(0, 3, (2, 5, 7))
        w = torch.rand(3) + 0.5
        def f(x):
            loss, counts = weighted_cross_entropy_with_counts(x, y, w, "mean", backend="cuda")
            return loss * 2, counts
        (l1, c1), (l2, c2) = torch.compile(f, backend="aot_eager", fullgraph=True)(x), f(x)
        assert torch.equal(l1, l2) and torch.equal(c1, c2)
        print("ok")
    """)
    if out.startswith("skip"):
        pytest.skip(out.strip())
    assert out.strip() == "ok"


def test_errors_derive_from_the_matching_builtins():
    from climseg import errors
    from climseg.data import list_samples

    assert issubclass(errors.UserError, ValueError)
    for cls in (errors.DataError, errors.CheckpointError, errors.ConfigError):
        assert issubclass(cls, errors.UserError) and issubclass(cls, ValueError)
    assert issubclass(errors.TrainingError, RuntimeError)
    assert issubclass(errors.MissingFileError, errors.DataError) and issubclass(
        errors.MissingFileError, FileNotFoundError
    )
    with pytest.raises(FileNotFoundError, match="no-such-folder: no such folder"):
        list_samples("no-such-folder")
    with pytest.raises(ValueError, match="unknown channel 'NOPE'"):
        from climseg.data import channel_indices

        channel_indices(["NOPE"])


def test_pytorch_warnings_are_issued_at_the_callers_line_not_in_climseg():
    """ATen warns at the Python frame that called it; climseg re-issues such warnings at the first
    frame outside climseg and torch (here: this file), where the user's filters apply."""
    import warnings

    import torch

    from climseg.nn import convert_model

    model = convert_model(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 4, padding="same")))
    x = torch.randn(1, 3, 7, 9)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch._C._set_warnAlways(True)
        try:
            y = model(x)
        finally:
            torch._C._set_warnAlways(False)
    assert y.shape == (1, 4, 7, 9)
    found = [w for w in caught if "padding='same'" in str(w.message)]
    assert found, [str(w.message) for w in caught]
    assert all(w.filename == __file__ for w in found), [(w.filename, w.lineno) for w in found]
