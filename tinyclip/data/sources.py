"""The mini profile's real image-caption sources (docs/data.md §1), one reader each.

Each source lists *tasks* (small picklable descriptions of one item, from the unpacked package tree) and
renders a task into a record (:func:`tinyclip.data.records.make_record`) or raises :class:`Skip`.

=============  ===================================  ======================================  ============
source         package                              caption                                 use
=============  ===================================  ======================================  ============
tux            tuxpaint-stamps-default (GPL-2.0)    the stamp's human-written English line  train / eval
noto           fonts-noto-color-emoji + ``emoji``   "an emoji of a {name}." (4 templates)   train
openclipart    openclipart-svg (public domain)      "title: kw1, kw2, ..."                  train
fmnist         dataset-fashion-mnist (MIT)          "a photo of a {class}." (5 templates)   train / eval
openmoji       openmoji (npm, CC-BY-SA-4.0)         the Noto name of the same code point    eval only
=============  ===================================  ======================================  ============
"""
from __future__ import annotations

import gzip
import html
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

from ..errors import TinyCLIPError
from .records import Skip, make_record

# --------------------------------------------------------------------------------------------- captions
EMOJI_TEMPLATES = ["an emoji of {a}.", "{a} emoji.", "a picture of {a}.", "an icon of {a}."]
# Fashion-MNIST: the same templates caption the training images and prompt the classifier (in-domain).
FMNIST_CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                  "ankle boot"]
FMNIST_TEMPLATES = ["a photo of a {c}.", "a black and white photo of a {c}.", "a low resolution photo of a {c}.",
                    "a photo of the {c}.", "a small photo of a {c}."]


def with_article(name: str) -> str:
    return ("an " if name[:1].lower() in "aeiou" else "a ") + name


def emoji_captions(name: str) -> list[str]:
    return [t.format(a=with_article(name)) for t in EMOJI_TEMPLATES]


LICENCES = {
    "tux": "GPL-2.0 (Tux Paint stamps, Debian tuxpaint-stamps-default)",
    "noto": "Apache-2.0 images / OFL-1.1 font (Debian fonts-noto-color-emoji); names from the emoji package (BSD)",
    "openclipart": "public domain (Debian openclipart-svg)",
    "fmnist": "MIT (Debian dataset-fashion-mnist)",
    "openmoji": "CC-BY-SA-4.0 (npm openmoji); names from the emoji package (BSD)",
}
PACKAGES_OF = {"tux": ["tuxpaint-stamps-default"], "noto": ["fonts-noto-color-emoji"],
               "openclipart": ["openclipart-svg"], "fmnist": ["dataset-fashion-mnist"], "openmoji": ["openmoji"]}


@dataclass(frozen=True)
class Task:
    source: str
    key: str
    origin: str                 # path inside the package (or code point), for the card and debugging
    category: str
    captions: tuple[str, ...] = ()
    payload: Any = None         # source-specific (file path, emoji string, pixel array, ...)


# ----------------------------------------------------------------------------------------------- render
_TEXT_ELEMENT = re.compile(rb"<(?:[\w.-]+:)?text[\s>/]")


def _reset_font_state() -> None:
    """Drop cairo's process-wide font state (scaled-font and glyph caches, FreeType faces).

    A cairo text render depends on what the same process rendered before: rendering OpenClipart's 293
    drawings with text forwards and then backwards in one process changed 64 of them (by fractions of a grey
    level), so the pool's scheduling decided the pixels and two builds differed. After this reset every
    render equals the first render of a fresh process (checked on the same drawings). Only SVGs with text
    need it (about 15 ms each); shapes never touch the font caches."""
    import gc

    import cairocffi

    gc.collect()  # cairo objects of earlier renders must be gone before their caches are freed
    cairocffi.cairo.cairo_debug_reset_static_data()


def _render_svg(path: str, cap: int) -> Image.Image:
    import cairosvg  # imported lazily: only the mini build needs libcairo

    if _TEXT_ELEMENT.search(Path(path).read_bytes()):
        _reset_font_state()
    img = Image.open(io.BytesIO(cairosvg.svg2png(url=path, output_width=cap)))
    if img.height > cap:  # tall drawing: render again with the height as the long side
        img = Image.open(io.BytesIO(cairosvg.svg2png(url=path, output_height=cap)))
    img.load()
    return img


_FONTS: dict[str, Any] = {}


def _render_emoji(text: str, font_path: str) -> Image.Image:
    from PIL import ImageDraw, ImageFont

    font = _FONTS.get(font_path)
    if font is None:
        font = _FONTS[font_path] = ImageFont.truetype(font_path, 109)  # Noto Color Emoji's bitmap size
    left, top, right, bottom = font.getbbox(text)
    canvas = Image.new("RGBA", (right + 16, bottom + 16), (255, 255, 255, 0))
    ImageDraw.Draw(canvas).text((8, 8), text, font=font, embedded_color=True)
    box = canvas.getbbox()
    if box is None:
        raise Skip("blank render (glyph not in the font)")
    return canvas.crop(box)


def render(task: Task, cap: int, quality: int) -> dict | tuple[str, str, str]:
    """Render one task; returns a record, or ``(source, reason, origin)`` for a skipped item."""
    try:
        common = dict(key=task.key, source=task.source, captions=list(task.captions), category=task.category,
                      origin=task.origin, cap=cap, quality=quality)
        if task.source == "fmnist":
            pixels, label, split = task.payload
            return make_record(Image.fromarray(pixels, "L"), blank_check=False, label=label, split=split, **common)
        if task.source == "noto":
            text, font_path = task.payload
            return make_record(_render_emoji(text, font_path), codepoints=_codepoints(text), **common)
        path = task.payload
        if path.endswith(".svg"):
            try:
                # OpenMoji's 72-unit canvas has a wide margin that is cropped away below: render larger.
                img = _render_svg(path, cap * 5 // 4 if task.source == "openmoji" else cap)
            except Exception as exc:  # cairosvg raises many types (XML, entity guard, parse); all mean unusable
                raise Skip(f"SVG not renderable ({type(exc).__name__})") from None
        else:
            try:
                img = Image.open(path)
                img.load()
            except Exception as exc:
                raise Skip(f"unreadable image ({type(exc).__name__})") from None
        extra = {}
        if task.source == "openmoji":
            # Crop to the drawing, as the Noto glyphs are, so the two emoji styles differ in art, not framing.
            box = img.convert("RGBA").getbbox()
            img = img.crop(box) if box else img
            extra = {"codepoints": task.key.split("_", 1)[1]}
        return make_record(img, **extra, **common)
    except Skip as skip:
        return (task.source, str(skip), task.origin)


# ------------------------------------------------------------------------------------------------ tasks
def _codepoints(text: str) -> str:
    """Stable code-point id of an emoji, ignoring variation selectors (U+FE0F) so fonts and sets match."""
    return "-".join(f"{ord(c):x}" for c in text if ord(c) != 0xFE0F)


def tux_tasks(tree: Path, skips: list) -> list[Task]:
    stamps = tree / "usr/share/tuxpaint/stamps"
    if not stamps.is_dir():
        raise TinyCLIPError(f"no stamps folder in {tree}; delete it and build again")
    stems: dict[Path, list[Path]] = {}
    for path in sorted(stamps.rglob("*")):
        if path.suffix in (".png", ".svg") and path.is_file():
            if path.stem.endswith(("_mirror", "_flip")):  # pre-made mirror images of another stamp
                skips.append(("tux", "mirror/flip variant of another stamp", str(path.relative_to(stamps))))
                continue
            stems.setdefault(path.with_suffix(""), []).append(path)
    tasks = []
    for stem, files in sorted(stems.items()):
        rel = stem.relative_to(stamps)
        files = sorted(files, key=lambda p: p.suffix != ".png")  # PNG first: the raster Tux Paint shows
        for extra in files[1:]:
            skips.append(("tux", "same stamp also shipped as SVG (PNG used)", str(extra.relative_to(stamps))))
        txt = stem.with_suffix(".txt")
        caption = ""
        if txt.is_file():
            lines = txt.read_text(encoding="utf-8", errors="replace").splitlines()
            caption = lines[0].strip() if lines else ""  # first line: English; the rest are translations
        if not caption:
            skips.append(("tux", "empty caption" if txt.is_file() else "no caption file", str(rel)))
            continue
        tasks.append(Task("tux", f"tux_{len(tasks):05d}", str(rel) + files[0].suffix, str(rel.parent),
                          (caption,), str(files[0])))
    return tasks


def emoji_names() -> dict[str, tuple[str, str]]:
    """Fully-qualified emoji without skin-tone modifiers -> (emoji text, readable name), keyed by code points."""
    import emoji

    out = {}
    for text, info in emoji.EMOJI_DATA.items():
        if info["status"] != emoji.STATUS["fully_qualified"] or any(0x1F3FB <= ord(c) <= 0x1F3FF for c in text):
            continue
        name = info["en"].strip(":").replace("_", " ")
        codes = [ord(c) for c in text]
        if all(0x1F1E6 <= c <= 0x1F1FF for c in codes) or (codes[0] == 0x1F3F4 and len(codes) > 2
                                                             and 0xE0020 <= codes[1] <= 0xE007F):
            name = f"flag of {name}"  # the emoji package names flags by country only
        out[_codepoints(text)] = (text, name)
    return out


def noto_tasks(tree: Path, skips: list) -> list[Task]:
    font = tree / "usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"
    if not font.is_file():
        raise TinyCLIPError(f"no NotoColorEmoji.ttf in {tree}; delete it and build again")
    return [Task("noto", f"noto_{cp}", f"U+{cp}", "emoji", tuple(emoji_captions(name)), (text, str(font)))
            for cp, (text, name) in sorted(emoji_names().items())]


def openmoji_tasks(tree: Path, skips: list) -> list[Task]:
    pkg = tree / "package"
    meta = json.loads((pkg / "data/openmoji.json").read_text(encoding="utf-8"))
    names = emoji_names()
    tasks, seen = [], set()
    for item in meta:
        if item.get("skintone"):
            skips.append(("openmoji", "skin-tone variant", item["hexcode"]))
            continue
        cp = _codepoints(item["emoji"])
        if cp not in names:
            skips.append(("openmoji", "no Noto counterpart (not a standard emoji of the emoji package)",
                          item["hexcode"]))
            continue
        if cp in seen:
            skips.append(("openmoji", "duplicate code point", item["hexcode"]))
            continue
        seen.add(cp)
        svg = pkg / "color/svg" / f"{item['hexcode']}.svg"
        # Caption: the *Noto* name of the same code point with the first emoji template, so the test asks for
        # exactly the names that the Noto emoji taught, in another artist's style.
        tasks.append(Task("openmoji", f"openmoji_{cp}", f"color/svg/{item['hexcode']}.svg",
                          f"{item['group']}/{item['subgroups']}", (emoji_captions(names[cp][1])[0],), str(svg)))
    return tasks


_TITLE = re.compile(r"<dc:title>(.*?)</dc:title>", re.S)
_SUBJECT = re.compile(r"<dc:subject>(.*?)</dc:subject>", re.S)
_LI = re.compile(r"<rdf:li>(.*?)</rdf:li>", re.S)


def openclipart_caption(svg_text: str, max_keywords: int = 8) -> str:
    """"title: kw1, kw2" from the drawing's Dublin Core metadata (the first dc:title is the work's)."""
    title = html.unescape(" ".join(m.group(1).split())) if (m := _TITLE.search(svg_text)) else ""
    keywords: list[str] = []
    if (s := _SUBJECT.search(svg_text)) is not None:
        for li in _LI.findall(s.group(1)):
            kw = html.unescape(" ".join(li.split()))
            if kw and kw.lower() != title.lower() and kw not in keywords:
                keywords.append(kw)
    keywords = keywords[:max_keywords]
    if title and keywords:
        return f"{title}: {', '.join(keywords)}"
    return title or ", ".join(keywords)


def openclipart_tasks(tree: Path, skips: list) -> list[Task]:
    root = tree / "usr/share/openclipart/svg"
    if not root.is_dir():
        raise TinyCLIPError(f"no svg folder in {tree}; delete it and build again")
    tasks = []
    for path in sorted(root.rglob("*.svg")):
        rel = path.relative_to(root)
        if path.is_symlink():  # the package links one drawing into several categories
            skips.append(("openclipart", "symlink to another drawing", str(rel)))
            continue
        caption = openclipart_caption(path.read_text(encoding="utf-8", errors="replace"))
        if not caption:
            skips.append(("openclipart", "empty caption", str(rel)))
            continue
        tasks.append(Task("openclipart", f"openclipart_{len(tasks):05d}", str(rel), str(rel.parent), (caption,),
                          str(path)))
    return tasks


def read_idx(path: Path) -> np.ndarray:
    """Read a (gzipped) IDX file, the MNIST family's format: magic, dims, then big-endian data."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def fmnist_tasks(tree: Path, skips: list) -> list[Task]:
    root = tree / "usr/share/datasets/fashion-mnist"
    tasks = []
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = read_idx(root / f"{prefix}-images-idx3-ubyte.gz")
        labels = read_idx(root / f"{prefix}-labels-idx1-ubyte.gz")
        if len(images) != len(labels):
            raise TinyCLIPError(f"Fashion-MNIST {split}: {len(images)} images but {len(labels)} labels; delete {tree} and build again")
        for i, (pixels, label) in enumerate(zip(images, labels)):
            name = FMNIST_CLASSES[int(label)]
            tasks.append(Task("fmnist", f"fmnist_{split}_{i:05d}", f"{prefix}[{i}]", name,
                              tuple(t.format(c=name) for t in FMNIST_TEMPLATES), (pixels, int(label), split)))
    return tasks


@dataclass(frozen=True)
class SourceSpec:
    name: str
    package: str
    tasks: Callable[[Path, list], list[Task]]
    parallel: bool          # worth a process pool (SVG rendering); others are fast in-process


MINI_SOURCES = [
    SourceSpec("tux", "tuxpaint-stamps-default", tux_tasks, True),
    SourceSpec("noto", "fonts-noto-color-emoji", noto_tasks, False),
    SourceSpec("openmoji", "openmoji", openmoji_tasks, True),
    SourceSpec("openclipart", "openclipart-svg", openclipart_tasks, True),
    SourceSpec("fmnist", "dataset-fashion-mnist", fmnist_tasks, False),
]
