"""Runs ``climseg.bench.track`` (also ``climseg bench track``); see that module for what it measures."""

import sys

from climseg.bench.track import main

if __name__ == "__main__":
    sys.exit(main())
