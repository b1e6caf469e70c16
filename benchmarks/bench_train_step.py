"""Runs ``climseg.bench.step`` (also ``climseg bench step``); see that module for what it measures."""

import sys

from climseg.bench.step import main

if __name__ == "__main__":
    sys.exit(main())
