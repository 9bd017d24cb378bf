"""Entry point of the `lensllm` console script.

Every input error ends as one line on stderr and exit code 2, an interrupt (Ctrl-C) as one
line and 130; anything else is a bug and keeps its traceback.
"""

import argparse
import sys
from collections.abc import Sequence

from lensllm import __version__
from lensllm.cli import bench, crd, fit, lensbench, operator_cmd, plan, report, run_trial, select
from lensllm.errors import LensLLMError

SUBCOMMANDS = (select, report, plan, run_trial, bench, fit, crd, operator_cmd, lensbench)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lensllm",
        description="Predict which LLM fine-tunes best from learning curves on small subsets.",
    )
    parser.add_argument("--version", action="version", version=f"lensllm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in SUBCOMMANDS:
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except LensLLMError as err:
        print(f"lensllm {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C is the user's choice, not a bug: no traceback
        print(f"lensllm {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
