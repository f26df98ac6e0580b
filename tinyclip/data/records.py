"""One rendered image-caption record, and the image handling every source shares.

Every source turns its raw material into :func:`make_record` output: the image composited on white, RGB,
capped at the profile's long side, JPEG-encoded once (4:4:4 chroma, so thin coloured strokes survive), with
its ``sha1`` (of the stored JPEG bytes: identical pixels encode identically, so equal hashes mean the same
image; the train/eval overlap check, re-done on the written shards). A source that cannot use an item
raises :class:`Skip` with a short reason; the build counts skips per source and reason for the data card.
"""
from __future__ import annotations

import hashlib
import io
from typing import Any

import numpy as np
from PIL import Image


class Skip(Exception):
    """An item a source cannot use; ``str(exc)`` is the (short, countable) reason."""


WHITE = (255, 255, 255)


def on_white(img: Image.Image) -> Image.Image:
    """Composite an image with transparency onto white; return RGB."""
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, WHITE + (255,))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return img.convert("RGB")


def cap_size(img: Image.Image, cap: int) -> Image.Image:
    """Shrink so the long side is at most ``cap`` (never enlarge)."""
    if max(img.size) <= cap:
        return img
    scale = cap / max(img.size)
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    return img.resize(size, Image.LANCZOS)


def clean_caption(text: str | None) -> str:
    return " ".join((text or "").split())


def encode_jpeg(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality, subsampling=0)
    return buf.getvalue()


def make_record(img: Image.Image, *, key: str, source: str, captions: list[str], category: str, origin: str,
                cap: int, quality: int, blank_check: bool = True, **extra: Any) -> dict:
    """Composite, cap, check, encode and hash one image; raises Skip for empty captions or blank images."""
    captions = [c for c in (clean_caption(c) for c in captions) if c]
    if not captions:
        raise Skip("empty caption")
    rgb = cap_size(on_white(img), cap)
    pixels = np.asarray(rgb)
    if blank_check and int(pixels.min()) >= 250:
        raise Skip("blank image")
    jpg = encode_jpeg(rgb, quality)
    return {
        "key": key, "source": source, "captions": captions, "category": category, "origin": origin,
        "jpg": jpg, "width": rgb.width, "height": rgb.height, "sha1": image_hash(jpg), **extra,
    }


def image_hash(jpg: bytes) -> str:
    return hashlib.sha1(jpg).hexdigest()
