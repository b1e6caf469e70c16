"""``climseg bench static``: the static check of the GPU kernels, run with the command line and
the results folder of ``climseg bench`` (``benchmarks/results/static-<date>.json`` and ``.md``).

The check itself (compile every kernel for sm_80 and sm_90 without a GPU, read its SASS, apply
the checks) is :mod:`climseg.verify`; see :mod:`climseg.verify.command` for the options.

    climseg bench static [--arch 80,90] [--dtype bf16,fp16,fp32] [--kernels triton,cuda] [--json OUT]
    python -m climseg.bench.static --help
"""

import sys

from climseg.bench import command_line, result_path
from climseg.verify.command import run


def main(argv=None):
    """Run the static check with options ``argv``; exit status 1 when a check fails."""
    return run(argv, command_line(argv), result_path)


if __name__ == "__main__":
    sys.exit(main())
