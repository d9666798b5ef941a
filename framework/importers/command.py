"""`natsflow import <system> FILE`: the command line of the importers (one subcommand per system);
each importer is imported only when its subcommand runs."""

from __future__ import annotations

import argparse
from typing import Any


def add_parsers(sub: Any) -> None:
    """Add `import` and its systems to the `natsflow` subcommands `sub`."""
    p = sub.add_parser("import", help="convert another system's pipeline file into a natsflow pipeline")
    systems = p.add_subparsers(dest="system", required=True)
    p = systems.add_parser("numaflow", help="a Numaflow Pipeline resource (numaflow.numaproj.io/v1alpha1)",
                           description="Converts a Numaflow Pipeline; lists every field it cannot convert and exits "
                                       "1 then, unless --allow-partial (docs/numaflow.md).")
    p.add_argument("numaflow_file", metavar="PIPELINE.yaml", help="the Numaflow Pipeline file")
    p.add_argument("-o", "--output", help="the natsflow pipeline file to write (default: stdout)")
    p.add_argument("--allow-partial", action="store_true", help="write the file even if some fields do not "
                   "convert (they are listed at its top)")
    p.set_defaults(func=cmd_import_numaflow)


def cmd_import_numaflow(args: argparse.Namespace) -> int:
    from framework.importers.numaflow.command import import_numaflow

    return import_numaflow(args.numaflow_file, args.output, allow_partial=args.allow_partial)
