"""`compactvision ...`: the command line, one sub-command per pipeline stage.

Each stage's module holds the work; this file only parses arguments and turns
library errors into a one-line message and a non-zero exit code.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from compactvision.errors import CompactVisionError

Handler = Callable[[argparse.Namespace], int | None]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="compactvision", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    # Each add_* function registers one stage's sub-command(s) and sets `func`.
    for add in _STAGES:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CompactVisionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: the last checkpoint is intact; rerun with --resume to continue", file=sys.stderr)
        return 130


# ---------------------------------------------------------------- the stages
# (registered in pipeline order; each imports its stage lazily so `--help` is fast)

_STAGES: list[Callable[[argparse._SubParsersAction], None]] = []


def stage(fn: Callable[[argparse._SubParsersAction], None]) -> Callable[[argparse._SubParsersAction], None]:
    _STAGES.append(fn)
    return fn


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
