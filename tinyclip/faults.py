"""Named kill points for ``make check-faults`` (scripts/check_faults.py): the process SIGKILLs itself there.

``TINYCLIP_KILL_AT="NAME[@TEXT][#N]"`` kills the process the N-th time (default 1) it passes point NAME with a
detail containing TEXT, e.g. ``written@checkpoints/last.pt#2`` (right after the second checkpoint is in place) or
``write@FINISHED`` (the marker written to its temporary file, not yet renamed). Points sit where a crash is most
likely to leave something half done: inside atomic writes, between a teacher-cache row and its flag, between data
shards. Without the variable a point is one environment lookup.
"""
from __future__ import annotations

import os
import signal

_ENV = "TINYCLIP_KILL_AT"
_hits: dict[str, int] = {}


def _parse(spec: str) -> tuple[str, str, int]:
    spec, _, count = spec.partition("#")
    name, _, text = spec.partition("@")
    return name, text, int(count or 1)


def point(name: str, detail: str = "") -> None:
    """Pass kill point ``name`` (``detail``: what is being written, e.g. a path)."""
    spec = os.environ.get(_ENV)
    if not spec:
        return
    want, text, count = _parse(spec)
    if want != name or text not in detail:
        return
    _hits[spec] = _hits.get(spec, 0) + 1
    if _hits[spec] == count:
        os.kill(os.getpid(), signal.SIGKILL)
