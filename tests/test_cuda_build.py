"""The build of the CUDA kernels: what `pip install .` must have produced.

CI sets CLIMSEG_FORCE_CUDA_BUILD=1 (it has nvcc and no GPU) and CLIMSEG_FORCE_CPP_BUILD=1: there
the compiled modules must exist. Elsewhere the checks of a missing module skip."""

import os

import pytest

import climseg.ops.cuda as cuda_ops


def test_cuda_extension_was_built_where_the_build_was_forced():
    if os.environ.get("CLIMSEG_FORCE_CUDA_BUILD") != "1":
        pytest.skip("CLIMSEG_FORCE_CUDA_BUILD is not set: climseg._cuda may legitimately be absent")
    from climseg import _cuda

    assert set(_cuda.architectures.split(";")) >= {"80", "90"} or os.environ.get("CLIMSEG_CUDA_ARCHS")
    assert _cuda.emulated is False


def test_emulated_extension_was_built_where_the_build_was_forced():
    if os.environ.get("CLIMSEG_FORCE_CPP_BUILD") != "1":
        pytest.skip("CLIMSEG_FORCE_CPP_BUILD is not set")
    from climseg import _cuda_emulated

    assert _cuda_emulated.emulated is True


def test_sources_ship_with_the_package_for_cupy():
    folder = cuda_ops.source_dir()
    assert folder is not None, "csrc/cuda sources are neither installed (climseg/_csrc/cuda) nor in a source tree"
    for name in cuda_ops.SOURCES + ("common.cuh", "registry.h", "emulate.h", "module.cpp"):
        assert os.path.isfile(os.path.join(folder, name)), name


def test_every_kernel_the_sources_register_is_known_to_python():
    """The CuPy path launches from Python's table; it must be what the sources register."""
    emulated = pytest.importorskip("climseg._cuda_emulated")
    assert emulated.kernels() == cuda_ops.kernel_signatures()


def test_info_names_the_cuda_kernels_state():
    line = cuda_ops.describe()
    assert "climseg._cuda" in line and ("CPU emulation" in line or "_cuda_emulated" in line)
