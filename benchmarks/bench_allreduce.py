"""Runs ``climseg.bench.allreduce`` (also ``climseg bench allreduce``); see that module for what it measures."""

import sys

from climseg.bench.allreduce import main

if __name__ == "__main__":
    sys.exit(main())
