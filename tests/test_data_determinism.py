"""A data build is a function of its inputs: two builds give byte-identical files, whatever ran before.

The fixtures in ``fixtures/openclipart/`` are two public-domain drawings from Debian's openclipart-svg package
(``cc:license`` PublicDomain in their metadata): with cairo's font caches left as the first render leaves them,
the second render of ``parking_romus_01.svg`` differs from a fresh process's (measured on this project's machine).
"""
from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tinyclip.data import build
from tinyclip.data.build import content_digest, data_digest, near_duplicates
from tinyclip.data.card import format_card, load_card

FIXTURES = Path(__file__).parent / "fixtures" / "openclipart"


def _png_of(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_svg_text_render_does_not_depend_on_earlier_renders():
    """A render after another drawing's text equals the render of a fresh process (without the font-state
    reset it does not: the pool's scheduling then decided the pixels)."""
    pytest.importorskip("cairosvg")
    from tinyclip.data.sources import _render_svg

    target, other = FIXTURES / "parking_romus_01.svg", FIXTURES / "ambulans_romus_01.svg"
    _render_svg(str(other), 128)   # leaves its fonts in cairo's process-wide caches
    after_other = hashlib.sha1(_png_of(_render_svg(str(target), 128))).hexdigest()
    fresh = subprocess.run(
        [sys.executable, "-c", "import hashlib, io, sys\nfrom tinyclip.data.sources import _render_svg\n"
         "buf = io.BytesIO(); _render_svg(sys.argv[1], 128).save(buf, format='PNG')\n"
         "print(hashlib.sha1(buf.getvalue()).hexdigest())", str(target)],
        capture_output=True, text=True, check=True).stdout.strip()
    assert after_other == fresh


def test_two_smoke_builds_are_byte_identical(tmp_path):
    a = build("smoke", data_root=tmp_path / "a")
    b = build("smoke", data_root=tmp_path / "b")
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert files_a == files_b
    shards = [p for p in files_a if p.suffix == ".tar"]
    assert len(shards) >= 2
    differing = [p for p in files_a if p.name not in ("build.json", "card.json", "card.png")
                 and (a / p).read_bytes() != (b / p).read_bytes()]
    assert differing == []
    # the recorded identity is the digest of those bytes, and the card shows it
    assert data_digest(a) == data_digest(b) == content_digest(a) == content_digest(b)
    card = load_card(a)
    assert card["identity"]["content_digest"] == data_digest(a)
    assert f"content digest: {data_digest(a)}" in format_card(card)


def test_content_digest_sees_one_changed_byte_and_ignores_the_card(tmp_path):
    folder = build("smoke", data_root=tmp_path)
    before = content_digest(folder)
    card = json.loads((folder / "card.json").read_text())
    card["build_seconds"] += 1.0   # wall time: not content
    (folder / "card.json").write_text(json.dumps(card))
    assert content_digest(folder) == before
    shard = sorted((folder / "train").glob("*.tar"))[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 1
    shard.write_bytes(bytes(data))
    assert content_digest(folder) != before


def test_near_duplicate_decision_is_exact_at_the_threshold():
    """Relative distances are compared without rounding: a drawing exactly at the threshold is not a near
    duplicate, one grey pixel closer is (float32 sums could put such a pair on either side)."""
    from PIL import Image

    def record(ink_pixels: int, source: str) -> dict:
        pixels = np.full(16 * 16, 255, dtype=np.uint8)
        pixels[:ink_pixels] = 155                     # ink 100 per channel
        img = Image.fromarray(np.repeat(pixels.reshape(16, 16, 1), 3, axis=2), "RGB")
        return {"jpg": _png_of(img), "source": source}   # PNG keeps the thumbnail's pixels exact

    # evaluation drawing: 48 inked pixels, squared ink 3*48*100**2; a training drawing with k more inked pixels
    # lies at squared distance 3*k*100**2, relative to its own larger ink: k = 16 is exactly 0.5, k = 15 below
    evaluation = [record(48, "tux")]
    at, below, same = record(48 + 16, "openclipart"), record(48 + 15, "openclipart"), record(48, "openclipart")
    found = near_duplicates([at, below, same], evaluation, threshold=0.5)
    assert id(below) in found and id(same) in found
    assert id(at) not in found
    assert near_duplicates([record(48, "tux")], evaluation, threshold=0.5) == set()   # same source: not checked
