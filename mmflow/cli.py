"""The ``mmflow`` command.

``mmflow info`` lists what the installed core offers under the names recipes use:
samplers, training time distributions and interpolants. Training subcommands
(``fit``, ``validate``, ``sample``, ``evaluate``) come with the Lightning training module.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import mmflow


def _info() -> str:
    from mmflow.interpolants import PATHS
    from mmflow.sampling import SAMPLERS
    from mmflow.timesteps import GRID_NAMES, TIME_DISTRIBUTIONS

    samplers = ", ".join(
        f"{s.name} (order {s.order}, {s.evals_per_step} NFE/step)" for s in SAMPLERS.values()
    )
    lines = [
        f"mmflow {mmflow.__version__}",
        "convention: t=0 noise, t=1 data; networks predict the velocity",
        f"samplers: {samplers}",
        f"time grids: {', '.join(GRID_NAMES)}",
        f"time distributions: {', '.join(TIME_DISTRIBUTIONS)}",
        f"interpolants: {', '.join(PATHS)}",
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmflow", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"mmflow {mmflow.__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="list samplers, time distributions and interpolants")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.command == "info":
        print(_info())
    return 0


if __name__ == "__main__":
    sys.exit(main())
