"""The `aspd` command. Each subcommand lives beside the code it drives; heavy imports happen on use."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# name -> module exposing `register(subparsers)`; each sets `func` on its parser.
_SUBCOMMANDS = {
    "models": "aspd.models.cli",
    "train": "aspd.train.cli",
    "generate": "aspd.engine.cli",  # registers `generate` and `chat`
    "serve": "aspd.serve.cli",
}


class CLIError(Exception):
    """An error the user can fix; printed as one line without a traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aspd", description="Adaptive Serial-Parallel Decoding toolkit")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in _SUBCOMMANDS.values():
        importlib.import_module(module).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CLIError as e:
        print(f"aspd: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("aspd: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    # Run through the package module so `except CLIError` sees the same class the subcommands raise.
    from aspd.cli import main as _main

    sys.exit(_main())
