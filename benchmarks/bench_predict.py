"""Runs ``climseg.bench.predict`` (also ``climseg bench predict``); see that module for what it measures."""

import sys

from climseg.bench.predict import main

if __name__ == "__main__":
    sys.exit(main())
