"""``python -m climseg`` runs the ``climseg`` command."""

import sys

from climseg.cli import main

sys.exit(main())
