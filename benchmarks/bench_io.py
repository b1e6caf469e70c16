"""Runs ``climseg.bench.io`` (also ``climseg bench io``); see that module for what it measures."""

import sys

from climseg.bench.io import main

if __name__ == "__main__":
    sys.exit(main())
