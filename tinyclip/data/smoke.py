"""The smoke profile's synthetic world: coloured shapes with captions, generated in about a second.

It mirrors the mini profile's sources and layouts so that every code path (build, card, loader, evaluation)
runs in tests and CI with no download, in the ShapeWorld spirit (docs/data.md §2):

* ``tux``: "a big red circle on the left." (size x colour x shape x position; split by unique caption)
* ``noto``: "an emoji of a big red circle." (4 templates), ``openmoji``: the same names in an outlined
  style (cross-style retrieval, never trained on), ``openclipart``: "red circle: circle, red, clipart",
* ``fmnist``: 28 px shapes classified by colour with prompt templates ("a photo of a red shape.").

Every attribute is readable from the pixels (colour: hue of the saturated pixels; shape: fill ratio of the
bounding box and top/bottom width; size: extent; position: box centre), so a hand-written oracle model can score 1.0 on every
evaluation set (tests/test_eval.py).
"""
from __future__ import annotations

import random

from PIL import Image, ImageDraw

from .profiles import DataProfile
from .records import Skip, make_record
from .sources import FMNIST_TEMPLATES, emoji_captions

# Eight well-separated hues (mixing with white, black or JPEG ringing changes lightness, not hue).
COLOURS = {"red": (220, 30, 30), "orange": (250, 120, 0), "yellow": (240, 220, 0), "green": (30, 160, 40),
           "cyan": (0, 190, 210), "blue": (30, 60, 220), "purple": (140, 40, 200), "pink": (250, 70, 180)}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": 0.3, "big": 0.6}                      # side as a fraction of the canvas
POSITIONS = {"left": 0.3, "middle": 0.5, "right": 0.7}   # centre x as a fraction of the canvas
POSITION_PHRASES = {"left": "on the left", "middle": "in the middle", "right": "on the right"}
FMNIST_CLASSES = [f"{c} shape" for c in COLOURS]         # the classification set's classes: colours

_SUPERSAMPLE = 4


def draw_shape(side: int, colour: str, shape: str, size: str, position: str, rng: random.Random,
               outline: bool = False) -> Image.Image:
    """One shape on white, drawn 4x larger and downsampled so the edges are antialiased."""
    big = side * _SUPERSAMPLE
    img = Image.new("RGB", (big, big), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    extent = SIZES[size] * big
    cx = (POSITIONS[position] + rng.uniform(-0.03, 0.03)) * big
    cy = (0.5 + rng.uniform(-0.1, 0.1)) * big
    box = (cx - extent / 2, cy - extent / 2, cx + extent / 2, cy + extent / 2)
    fill = COLOURS[colour]
    line = (20, 20, 20) if outline else None   # OpenMoji-like black outline: the "other art style"
    width = max(1, big // 24) if outline else 0
    if shape == "circle":
        draw.ellipse(box, fill=fill, outline=line, width=width)
    elif shape == "square":
        draw.rectangle(box, fill=fill, outline=line, width=width)
    else:
        draw.polygon([(cx, box[1]), (box[2], box[3]), (box[0], box[3])], fill=fill, outline=line, width=width)
    return img.resize((side, side), Image.LANCZOS)


def generate(profile: DataProfile, seed: int = 0) -> tuple[list[dict], list[tuple[str, str, str]]]:
    """All smoke records (with ``split`` set for fmnist) and skips, deterministic in ``seed``."""
    rng = random.Random(seed)
    side, cap, q = profile.image_cap, profile.image_cap, profile.jpeg_quality
    records: list[dict] = []
    skips: list[tuple[str, str, str]] = []

    def add(img, source, key, captions, category, **extra):
        try:
            records.append(make_record(img, key=key, source=source, captions=captions, category=category,
                                       origin=f"synthetic:{key}", cap=cap, quality=q, **extra))
        except Skip as skip:
            skips.append((source, str(skip), key))

    concepts = [(s, c, h) for s in SIZES for c in COLOURS for h in SHAPES]
    tux_index = 0
    for size, colour, shape in concepts:
        for position in POSITIONS:
            for rep in range(2):
                caption = f"a {size} {colour} {shape} {POSITION_PHRASES[position]}."
                add(draw_shape(side, colour, shape, size, position, rng), "tux", f"tux_{tux_index:05d}", [caption],
                    f"shapes/{shape}")
                tux_index += 1
    for size, colour, shape in concepts:
        name = f"{size} {colour} {shape}"
        for rep in range(3):
            add(draw_shape(side, colour, shape, size, "middle", rng), "noto",
                f"noto_{size}-{colour}-{shape}-{rep}", emoji_captions(name), "emoji",
                codepoints=f"{size}-{colour}-{shape}")
        add(draw_shape(side, colour, shape, size, "middle", rng, outline=True), "openmoji",
            f"openmoji_{size}-{colour}-{shape}", [emoji_captions(name)[0]], "emoji",
            codepoints=f"{size}-{colour}-{shape}")
    for i in range(150):
        colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
        add(draw_shape(side, colour, shape, rng.choice(list(SIZES)), rng.choice(list(POSITIONS)), rng),
            "openclipart", f"openclipart_{i:05d}", [f"{colour} {shape}: {shape}, {colour}, clipart"], "shapes")
    for split, per_class in (("train", 40), ("test", 20)):
        for label, colour in enumerate(COLOURS):
            for i in range(per_class):
                img = draw_shape(28, colour, rng.choice(SHAPES), rng.choice(list(SIZES)), "middle", rng)
                add(img, "fmnist", f"fmnist_{split}_{label}{i:04d}",
                    [t.format(c=FMNIST_CLASSES[label]) for t in FMNIST_TEMPLATES], FMNIST_CLASSES[label],
                    label=label, split=split)
    return records, skips
