"""``climseg info``: versions, devices, and which backend each op uses (:mod:`climseg.info`)."""


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "info",
        help="versions, devices, and which backend each op uses",
        description="Versions, devices, the backend each op uses and why, and the environment variables in force.",
    )
    parser.set_defaults(run=run)
    return parser


def run(args):
    from climseg.info import info_lines

    for line in info_lines():
        print(line)
    return 0
