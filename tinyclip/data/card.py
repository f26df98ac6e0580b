"""The data card: what a built data set contains, where it came from, and what was left out and why.

``card.json`` holds per-source and per-split counts, package versions and licences, every skip counted by
source and reason (with a few examples), the train/eval overlap re-checked on the written shards (0), the
evaluation sets' tasks and descriptions (Fashion-MNIST is labelled *in-domain prompted classification*),
the default training mix, build time and disk size. ``card.png`` shows example images with their captions.
"""
from __future__ import annotations

import json
import textwrap
from collections import Counter, defaultdict
from pathlib import Path

from ..errors import TinyCLIPError
from .profiles import EVAL_SETS, DataProfile


def _disk_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def make_card(profile: DataProfile, splits: dict[str, list[dict]], skips: list, packages: dict,
              rendered: dict[str, int], overlap: dict[str, int], build_seconds: float, folder: Path,
              identity: dict[str, str] | None = None) -> dict:
    """``identity``: the build settings' ``fingerprint`` and the ``content`` digest of the written files."""
    from .build import NEAR_DUPLICATE_DISTANCE
    from .sources import LICENCES

    per_split = {name: dict(sorted(Counter(r["source"] for r in rs).items())) for name, rs in splits.items()}
    skipped: dict[str, dict[str, dict]] = defaultdict(dict)
    for (source, reason), n in sorted(Counter((s, r) for s, r, _ in skips).items()):
        examples = [o for s, r, o in skips if s == source and r == reason][:3]
        skipped[source][reason] = {"count": n, "examples": examples}
    sources = {}
    for src in sorted(set(rendered) | set(skipped)):
        used = sum(per_split[name].get(src, 0) for name in per_split)
        sources[src] = {
            "licence": "CC0-1.0 (generated)" if profile.kind == "synthetic" else LICENCES.get(src, ""),
            "rendered": rendered.get(src, 0),
            "used": used,
            "per_split": {name: per_split[name][src] for name in per_split if src in per_split[name]},
            "skipped_total": sum(v["count"] for v in skipped.get(src, {}).values()),
            "skipped": skipped.get(src, {}),
        }
    eval_sets = {}
    for name, (task, description) in EVAL_SETS.items():
        items = splits[f"eval/{name}"]
        eval_sets[name] = {"task": task, "description": description, "n": len(items), "path": f"eval/{name}",
                           "clip_benchmark_name": f"wds/{name}"}
        if task == "zeroshot_classification":
            eval_sets[name]["per_class"] = dict(sorted(Counter(r["category"] for r in items).items()))
    return {
        "profile": profile.name,
        # two builds with the same content digest hold byte-identical files (tinyclip.data.build.content_digest)
        "identity": {"settings_fingerprint": (identity or {}).get("fingerprint"),
                     "content_digest": (identity or {}).get("content")},
        "format": "webdataset (jpg, txt, json); evaluation sets in clip-benchmark wds/ layout",
        "packages": packages,
        "sources": sources,
        "splits": {name: {"total": len(rs), "per_source": per_split[name]} for name, rs in splits.items()},
        "eval_sets": eval_sets,
        "train_eval_overlap_by_image_hash": {**overlap, "total": sum(overlap.values())},
        "tux_caption_overlap": len({r["captions"][0] for r in splits["train"] if r["source"] == "tux"}
                                   & {r["captions"][0] for r in splits["eval/tux"]}),
        "near_duplicate_check": (f"training drawings within relative thumbnail distance {NEAR_DUPLICATE_DISTANCE} of "
                                 f"an evaluation drawing of another source are removed")
        if profile.near_duplicate_check else "off (synthetic shapes)",
        "default_weights": profile.weights,
        "image_storage": f"RGB JPEG q{profile.jpeg_quality} composited on white, long side <= {profile.image_cap} px "
                         f"(Fashion-MNIST at its native 28 px)",
        "build_seconds": round(build_seconds, 1),
        "disk_bytes": _disk_bytes(folder),
    }


def load_card(folder: str | Path) -> dict:
    path = Path(folder) / "card.json"
    try:
        card = json.loads(path.read_text())
    except FileNotFoundError:
        raise TinyCLIPError(f"no data card at {path}; build the data set first (tinyclip data build)") from None
    if "identity" not in card:  # built before the card carried it: build.json has the same values
        from .build import data_digest, read_fingerprint

        card["identity"] = {"settings_fingerprint": read_fingerprint(Path(folder)),
                            "content_digest": data_digest(Path(folder))}
    return card


def format_card(card: dict) -> str:
    """A short human-readable summary of a card."""
    lines = [f"data set: profile {card['profile']}  ({card['disk_bytes'] / 2**20:.1f} MiB, built in "
             f"{card['build_seconds']:.0f} s)"]
    lines.append(f"{'source':<12} {'licence':<28} {'rendered':>8} {'used':>7} {'skipped':>7}  per split")
    for src, s in card["sources"].items():
        lic = textwrap.shorten(s["licence"], 28, placeholder="...")
        per = ", ".join(f"{k}={v}" for k, v in s["per_split"].items())
        lines.append(f"{src:<12} {lic:<28} {s['rendered']:>8} {s['used']:>7} {s['skipped_total']:>7}  {per}")
    for name, e in card["eval_sets"].items():
        lines.append(f"eval/{name:<8} n={e['n']:<6} {e['task']}: {e['description']}")
    lines.append(f"train/eval overlap by image hash: {card['train_eval_overlap_by_image_hash']['total']}")
    ident = card.get("identity") or {}
    lines.append(f"content digest: {ident.get('content_digest')}  (settings fingerprint "
                 f"{ident.get('settings_fingerprint')}; equal digests = byte-identical shards)")
    return "\n".join(lines)


def render_card_figure(folder: Path, splits: dict[str, list[dict]], per_row: int = 6, cell: int = 96) -> Path:
    """``card.png``: a grid of example images with captions, one row per (split, source).

    The images are pasted into one mosaic shown in a single axes (one axes per image costs seconds)."""
    import io
    import random

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from PIL import Image

    from .imageops import fit_square_pil

    rows = []
    for name, rs in splits.items():
        by_source = defaultdict(list)
        for r in rs:
            by_source[r["source"]].append(r)
        for src, items in sorted(by_source.items()):
            rows.append((f"{name}\n{src}", random.Random(0).sample(items, min(per_row, len(items)))))
    pad = cell // 2   # room for the caption above each image
    mosaic = Image.new("RGB", (per_row * cell, max(1, len(rows)) * (cell + pad)), (255, 255, 255))
    fig, ax = plt.subplots(figsize=(per_row * 1.9 + 1.2, len(rows) * 2.85 * (cell + pad) / (cell + pad) + 0.2))
    for i, (title, items) in enumerate(rows):
        top = i * (cell + pad)
        for j, r in enumerate(items):
            img = fit_square_pil(Image.open(io.BytesIO(r["jpg"])), cell - 8)
            mosaic.paste(img, (j * cell + 4, top + pad))
            ax.text(j * cell + cell / 2, top + pad - 3, "\n".join(textwrap.wrap(r["captions"][0], 22)[:3]),
                    ha="center", va="bottom", fontsize=7.5)
        ax.text(-6, top + pad + cell / 2, title, ha="right", va="center", fontsize=8)
    ax.imshow(np.asarray(mosaic))
    ax.axis("off")
    fig.subplots_adjust(left=0.12, right=0.99, top=0.99, bottom=0.01)
    path = folder / "card.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
