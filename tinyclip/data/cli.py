"""``tinyclip data build|card`` handlers (arguments: :mod:`tinyclip.cli`): build a data set; print its card."""
from __future__ import annotations

import json
import logging
from pathlib import Path

from .profiles import profile_dir


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
