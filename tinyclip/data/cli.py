"""``tinyclip data build|card``: build a profile's data set; print its data card."""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from .profiles import PROFILES, profile_dir


def _folder(args) -> Path:
    return Path(args.out) if getattr(args, "out", None) else profile_dir(args.profile, args.data_root)


def _build(args) -> int:
    from .build import build

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = build(args.profile, out=args.out, data_root=args.data_root, force=args.force, workers=args.workers)
    print(out)
    return 0


def _card(args) -> int:
    from .card import format_card, load_card

    card = load_card(_folder(args))
    print(json.dumps(card, indent=1, ensure_ascii=False) if args.json else format_card(card))
    return 0


def add_cli(subparsers) -> None:
    data = subparsers.add_parser("data", help="build and describe the profiles' data sets")
    sub = data.add_subparsers(dest="data_command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--profile", default="mini", choices=[p for p in PROFILES if p != "paper"])
    common.add_argument("--data-root", default=None, help="folder holding <profile>/ and cache/ "
                                                          "(default: $TINYCLIP_DATA_ROOT or data/ in the checkout)")
    common.add_argument("--out", default=None, help="the data set folder (default: <data root>/<profile>)")
    b = sub.add_parser("build", parents=[common], help="fetch, render and write a profile's data set")
    b.add_argument("--force", action="store_true", help="rebuild even if an up-to-date build exists")
    b.add_argument("--workers", type=int, default=2, help="rendering processes (default 2)")
    b.set_defaults(func=_build)
    c = sub.add_parser("card", parents=[common], help="print the data card (counts, licences, skips, overlap)")
    c.add_argument("--json", action="store_true", help="the full card as JSON")
    c.set_defaults(func=_card)
