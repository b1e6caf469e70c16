"""Build of climseg: the Python package, with the Triton kernels of ``kernels/``
installed as the subpackage ``climseg.kernels``.

Dependencies are declared here; build requirements and tool settings live in
pyproject.toml. Install PyTorch first (see README): an unpinned ``torch``
requirement resolved by pip alone pulls a multi-GB CUDA build.
"""
from setuptools import find_packages, setup

packages = find_packages(include=["climseg", "climseg.*"]) + ["climseg.kernels"]

setup(
    name="climseg",
    version="0.1.0",
    description="DeepLabv3+ segmentation of tropical cyclones and atmospheric rivers "
    "in climate simulation data, from a laptop CPU to thousands of GPUs",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.9",
    packages=packages,
    package_dir={"climseg.kernels": "kernels"},
    install_requires=[
        "torch>=2.3",
        "numpy>=1.22",
        "scipy>=1.9",
        "h5py>=3.6",
        "netCDF4>=1.6",
        "matplotlib>=3.5",
        "tqdm>=4.60",
        "pyyaml>=5.4",
    ],
    extras_require={
        "test": ["pytest>=7"],
        "triton": ["triton>=3.0"],
        "mpi": ["mpi4py>=3.1"],             # plus an MPI: the system's, or `pip install mpich`
        "cuda": ["cupy-cuda12x>=13"],
    },
    entry_points={"console_scripts": ["climseg=climseg.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Atmospheric Science",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
