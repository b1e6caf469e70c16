"""Runs ``climseg.bench.atrous`` (also ``climseg bench atrous``); see that module for what it measures."""

import sys

from climseg.bench.atrous import main

if __name__ == "__main__":
    sys.exit(main())
