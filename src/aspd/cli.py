"""The `aspd` command. Each subcommand lives beside the code it drives; only the one invoked is imported."""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from collections.abc import Sequence

# subcommand -> module exposing `register(subparsers)`; each parser sets `func`.
_SUBCOMMANDS = {
    "models": "aspd.models.cli",
    "train": "aspd.train.cli",
    "generate": "aspd.engine.cli",
    "chat": "aspd.engine.cli",
    "serve": "aspd.serve.cli",
    "transform": "aspd.pipeline.cli",
    "distill": "aspd.distill",
    "bench": "aspd.bench.cli",
    "pasta": "aspd.pasta.cli",
    "prompts": "aspd.prompts.cli",
}


# Libraries whose own deprecation notices concern aspd's calls into them, never the user's input.
_LIBRARIES = r"(torch|transformers|peft|accelerate|huggingface_hub|safetensors|gguf)(\.|$)"


def quiet_library_warnings() -> None:
    """Hide library warnings a CLI user cannot act on; warnings from aspd itself (about the user's model, input
    or device) and every error still show. Skipped when the user chose filters (-W or PYTHONWARNINGS)."""
    if sys.warnoptions:
        return
    for category in (FutureWarning, DeprecationWarning, PendingDeprecationWarning):
        warnings.filterwarnings("ignore", category=category, module=_LIBRARIES)
    # torch's DataLoader on a machine without a GPU: training still runs, the pinning is just skipped
    warnings.filterwarnings("ignore", message="'pin_memory' argument is set as true but no accelerator",
                            category=UserWarning, module=r"torch\.utils\.data")


class CLIError(Exception):
    """An error the user can fix; printed as one line without a traceback."""


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """All subcommands for help; just the invoked one otherwise (keeps start-up fast)."""
    parser = argparse.ArgumentParser(prog="aspd", description="Adaptive Serial-Parallel Decoding toolkit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    modules = [_SUBCOMMANDS[command]] if command in _SUBCOMMANDS else list(dict.fromkeys(_SUBCOMMANDS.values()))
    for module in modules:
        importlib.import_module(module).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    quiet_library_warnings()
    args = build_parser(argv[0] if argv else None).parse_args(argv)
    args.argv = argv  # the command as given, for reports that record how they were made
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
