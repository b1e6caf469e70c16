"""Runs ``climseg.bench.cuda_kernels`` (also ``climseg bench cuda-kernels``); see that module for what it measures."""

import sys

from climseg.bench.cuda_kernels import main

if __name__ == "__main__":
    sys.exit(main())
