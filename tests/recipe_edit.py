"""Editing recipe mappings in tests: one value at a dotted path (``stages.0.steps`` indexes the list)."""
from __future__ import annotations

import copy
from typing import Any


def with_value(recipe: dict, path: str, value: Any) -> dict:
    """A copy of ``recipe`` with ``value`` at ``path`` (missing mappings on the way are created)."""
    out = copy.deepcopy(recipe)
    node = out
    keys = path.split(".")
    for key in keys[:-1]:
        node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
    node[keys[-1]] = value
    return out
