"""The whole LiT build of a profile's data set, step by step and idempotently.

:func:`build_lit_teacher` runs features -> heads -> evaluation -> exported embeddings -> (optionally) the
trainer's teacher-embedding cache, each step skipped when its output already matches its inputs. The output
folder (:func:`default_out_dir`) and the step identities are derived from the built data set's digest, so
finished builds under ``runs/lit`` are found again and a rebuilt data set gets a teacher of its own.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import torch

from ..errors import TinyCLIPError
from .embeddings import TeacherEmbeddings, export_teacher_embeddings, make_teacher_cache
from .features import FeatureCache, cache_features, training_samples
from .heads import HeadTrainingConfig, mixture_weights, torch_threads, train_heads
from .model import LiTConfig, LiTTeacher, load_lit_teacher, read_heads_meta
from .towers import DEFAULT_IMAGE_SIZE, MemoizedTower, Towers, load_pretrained_towers

# the files of a build folder; finished builds under runs/lit are found by these names
FEATURES_FILE = "features.safetensors"
HEADS_FILE = "heads.safetensors"
EMBEDDINGS_FILE = "teacher_embeddings.safetensors"
ITEMS_FILE = "eval_items.json"   # per-item outcomes on the students' evaluation sets (teacher_eval_items)

# Head-training steps per profile when the caller gives no HeadTrainingConfig. The smoke data set (≈ 800
# samples) is a code-path check whose held-out loss bottomed out near step 150 of the default 1,000 (which cost
# over 3 minutes on the shared 2-core machine, a smoke notebook's whole budget), so it stops at 200.
PROFILE_HEAD_STEPS = {"smoke": 200}


def default_out_dir(profile: str, image_size: int, data_root: str | Path | None = None) -> Path:
    """``runs/lit/<profile>-<size>px-<data digest>``: a rebuilt data set with other content gets its own LiT
    teacher (features, heads, embedding cache) instead of being served the old one's embeddings."""
    from ..data.build import data_digest
    from ..data.profiles import profile_dir
    from ..runs import runs_root

    digest = data_digest(profile_dir(profile, data_root)) or "unbuilt"
    return runs_root() / "lit" / f"{profile}-{image_size}px-{digest}"


def _data_fingerprint(data_dir: Path) -> str:
    stamp = data_dir / "build.json"
    if not stamp.is_file():
        raise TinyCLIPError(f"no built data set at {data_dir} (missing build.json); run "
                            f"`tinyclip data build --profile {data_dir.name}` first")
    built = json.loads(stamp.read_text())
    # the build settings and the digest of the built content: a rebuild with other bytes is another data set
    return f"{built.get('fingerprint')}-{built.get('content')}"


def build_lit_teacher(profile: str = "mini", data_root: str | Path | None = None, out_dir: str | Path | None = None,
                      image_size: int = DEFAULT_IMAGE_SIZE, seed: int = 0, *, towers: Towers | None = None,
                      config: LiTConfig | None = None, heads: HeadTrainingConfig | None = None,
                      source_fraction: dict[str, float] | None = None, source_weights: dict[str, float] | None = None,
                      evaluate: bool = True, eval_max_items: int | None = None, batch_size: int = 64,
                      teacher_cache_views: int = 0, num_threads: int | None = None,
                      progress: bool = True) -> dict[str, Any]:
    """Build the LiT teacher of a profile's data set, skipping every step whose output is up to date.

    1. frozen-tower features of every training sample (``features.safetensors``; ``source_fraction``
       caches a hash-chosen subset of a source);
    2. projection heads trained on them (``heads.safetensors``, log in ``heads.json``);
    3. the students' evaluation (``eval.json``, per-item outcomes in ``eval_items.json``; tower outputs memoised
       in ``eval_memo_*.safetensors``);
    4. the exported embeddings per training sample id (``teacher_embeddings.safetensors``; see
       :func:`export_teacher_embeddings`);
    5. with ``teacher_cache_views = K > 0``: the trainer's teacher-embedding cache for a loader with K fixed
       views (``teacher_cache_v<K>/``, for recipe ``teacher: {embeddings: DIR}``; :func:`make_teacher_cache`).

    ``towers`` defaults to the pretrained EfficientNet-Lite0 + all-MiniLM-L6-v2; ``source_weights`` (the
    head-training mixture) default to the data set's ``train/mix.json``. Returns results and paths
    (also written to ``summary.json``). ``num_threads`` sets torch's threads for the call (restored
    after): on a shared 2-core machine 1 thread ran the towers ~2.5x faster than 2."""
    with torch_threads(num_threads):
        return _build_lit_teacher(profile, data_root, out_dir, image_size, seed, towers, config, heads,
                                  source_fraction, source_weights, evaluate, eval_max_items, batch_size,
                                  teacher_cache_views, progress)


def _build_lit_teacher(profile, data_root, out_dir, image_size, seed, towers, config, heads, source_fraction,
                       source_weights, evaluate, eval_max_items, batch_size, teacher_cache_views,
                       progress) -> dict[str, Any]:
    from ..data.profiles import get_profile, profile_dir
    from ..runs import atomic_write_json, file_digest

    if get_profile(profile).kind == "webdataset":
        raise TinyCLIPError(f"the LiT teacher is built on a built data set (smoke or mini), not the {profile!r} "
                            "profile; the paper profile distils from OpenCLIP ViT-B/32 directly")
    data_dir = profile_dir(profile, data_root)
    fingerprint = _data_fingerprint(data_dir)
    out = Path(out_dir) if out_dir is not None else default_out_dir(profile, image_size)
    out.mkdir(parents=True, exist_ok=True)
    config = config or LiTConfig(image_size=image_size)
    if config.image_size != image_size:
        raise TinyCLIPError(f"image_size {image_size} disagrees with config.image_size {config.image_size}")
    heads = heads or HeadTrainingConfig(seed=seed, **({"steps": PROFILE_HEAD_STEPS[profile]}
                                                      if profile in PROFILE_HEAD_STEPS else {}))
    source_fraction = dict(source_fraction or {})
    towers = towers or load_pretrained_towers()
    timings: dict[str, float] = {}

    # 1. features
    features_path = out / FEATURES_FILE
    want = {"data_fingerprint": fingerprint, "image_size": image_size, "towers": towers.name,
            "source_fraction": source_fraction}
    cache = FeatureCache.load(features_path) if features_path.is_file() else None
    if cache is None or any(cache.meta.get(k) != v for k, v in want.items()):
        t0 = time.perf_counter()
        samples, coverage = training_samples(data_dir, source_fraction)
        cache = cache_features(towers, samples, image_size, batch_size=batch_size, total=len(samples),
                               progress=progress, meta={**want, "coverage": coverage, "profile": profile})
        del samples
        cache.save(features_path)
        timings["features"] = round(time.perf_counter() - t0, 1)
    features_digest = file_digest(features_path)

    # 2. heads
    heads_path, heads_log_path = out / HEADS_FILE, out / "heads.json"
    heads_id = {"features": features_digest, "config": asdict(config), "training": asdict(heads),
                "source_weights": source_weights}
    if heads_path.is_file() and heads_log_path.is_file() and read_heads_meta(heads_path).get("identity") == heads_id:
        teacher = load_lit_teacher(heads_path, towers)
        head_log = json.loads(heads_log_path.read_text())
    else:
        torch.manual_seed(seed)
        teacher = LiTTeacher(towers, config)
        weights = source_weights
        if weights is None and (data_dir / "train" / "mix.json").is_file():
            weights = json.loads((data_dir / "train" / "mix.json").read_text()).get("weights")
        head_log = train_heads(teacher, cache, heads, mixture_weights(cache, weights), progress=progress)
        head_log["source_weights"] = weights
        teacher.save_heads(heads_path, {"identity": heads_id})
        atomic_write_json(heads_log_path, head_log)
        timings["heads"] = head_log["seconds"]
    heads_digest = file_digest(heads_path)

    # 3. evaluation (the students' metrics and per-item outcomes), with the towers memoised across rebuilds of
    # the heads
    eval_path = out / "eval.json"
    results = None
    if evaluate:
        eval_id = {"heads": heads_digest, "max_items": eval_max_items, "data_fingerprint": fingerprint}
        previous = json.loads(eval_path.read_text()) if eval_path.is_file() else {}
        if previous.get("identity") == eval_id:
            results = previous["results"]
        else:
            t0 = time.perf_counter()
            items: dict[str, dict[str, list[int]]] = {}
            results = _evaluate_memoized(teacher, out, data_dir, fingerprint, max_items=eval_max_items, items=items)
            atomic_write_json(eval_path, {"identity": eval_id, "results": results})
            _write_items(out, eval_id, items, teacher)
            timings["eval"] = round(time.perf_counter() - t0, 1)

    # 4. the embeddings the trainer mimics
    embeddings_path = out / EMBEDDINGS_FILE
    export_meta = {"heads": heads_digest, "features": features_digest}
    if not embeddings_path.is_file() or TeacherEmbeddings.load(embeddings_path).meta.get("heads") != heads_digest:
        export_teacher_embeddings(teacher, cache, embeddings_path, extra_meta=export_meta)

    # 5. the trainer's teacher-embedding cache (rebuilt when the embeddings changed)
    teacher_cache_path = None
    if teacher_cache_views > 0:
        import shutil

        from ..teacher_cache import TeacherEmbeddingCache
        teacher_cache_path = out / f"teacher_cache_v{teacher_cache_views}"
        digest = TeacherEmbeddings.load(embeddings_path).digest()
        current = None
        if teacher_cache_path.is_dir():
            try:
                current = TeacherEmbeddingCache.open(teacher_cache_path, writable=False)
            except TinyCLIPError:
                current = None
        if current is None or current.meta["identity"].get("embeddings") != digest or \
                current.filled_count() != current.capacity:
            shutil.rmtree(teacher_cache_path, ignore_errors=True)
            t0 = time.perf_counter()
            make_teacher_cache(embeddings_path, data_dir, teacher_cache_path, teacher_cache_views, progress=progress)
            timings["teacher_cache"] = round(time.perf_counter() - t0, 1)

    summary = {
        "profile": profile, "data_dir": str(data_dir), "data_fingerprint": fingerprint, "image_size": image_size,
        "towers": towers.name, "config": asdict(config), "logit_scale": float(teacher.logit_scale.detach().exp()),
        "coverage": cache.meta.get("coverage"), "samples": len(cache), "unique_captions": len(cache.texts),
        "feature_seconds": {"image": cache.meta.get("image_seconds"), "text": cache.meta.get("text_seconds")},
        "heads": {k: head_log.get(k) for k in ("best_step", "seconds", "heldout", "train_samples", "val_samples")},
        "eval": results, "timings_this_call": timings,
        "paths": {"features": str(features_path), "heads": str(heads_path), "heads_log": str(heads_log_path),
                  "eval": str(eval_path) if evaluate else None, "embeddings": str(embeddings_path),
                  "teacher_cache": str(teacher_cache_path) if teacher_cache_path else None},
    }
    atomic_write_json(out / "summary.json", summary)
    return summary


def _evaluate_memoized(teacher: LiTTeacher, out: Path, data_dir: Path, fingerprint: str, *,
                       max_items: int | None = None, items: dict | None = None) -> dict[str, dict[str, float]]:
    """:func:`evaluate_teacher` with each tower's outputs memoised in ``out`` (``eval_memo_*``): heads rebuilt on
    the same towers and data, or a second pass for per-item outcomes, run no tower again."""
    from ..runs import atomic_write_json

    memo_paths = {"image": out / "eval_memo_image.safetensors", "text": out / "eval_memo_text.safetensors"}
    memo_image, memo_text = MemoizedTower(teacher.image_tower), MemoizedTower(teacher.text_tower)
    memo_id = {"data_fingerprint": fingerprint, "image_size": teacher.config.image_size,
               "towers": teacher.towers_name}
    memo_meta = out / "eval_memo.json"
    if memo_meta.is_file() and json.loads(memo_meta.read_text()) == memo_id:
        for memo, p in ((memo_image, memo_paths["image"]), (memo_text, memo_paths["text"])):
            if p.is_file():
                memo.load(p)
    teacher.image_tower, teacher.text_tower = memo_image, memo_text
    try:
        results = evaluate_teacher(teacher, data_dir / "eval", max_items=max_items, items=items)
    finally:
        teacher.image_tower, teacher.text_tower = memo_image.tower, memo_text.tower
    memo_image.save(memo_paths["image"])
    memo_text.save(memo_paths["text"])
    atomic_write_json(memo_meta, memo_id)
    return results


def _write_items(out: Path, identity: dict[str, Any], items: dict, teacher: LiTTeacher) -> dict[str, Any]:
    from ..runs import atomic_write_json

    stored = {"identity": identity, "items": items,
              "params": {"total": sum(p.numel() for p in teacher.parameters())}}
    atomic_write_json(out / ITEMS_FILE, stored)
    return stored


def teacher_eval_items(profile: str = "mini", image_size: int = DEFAULT_IMAGE_SIZE, *,
                       data_root: str | Path | None = None, out_dir: str | Path | None = None,
                       towers: Towers | None = None) -> dict[str, Any]:
    """The built LiT teacher's per-item outcomes on the students' evaluation sets (the format of a run's
    ``eval_items.json``, so the studies score it like a student) and its parameter count:
    ``{"identity", "items", "params": {"total"}}``, kept in ``eval_items.json`` of its build folder. Builds before
    the build step kept them are evaluated once more through the tower memo (no tower forward for inputs seen)."""
    from ..data.profiles import profile_dir
    from ..runs import file_digest

    out = Path(out_dir) if out_dir is not None else default_out_dir(profile, image_size, data_root)
    heads_path = out / HEADS_FILE
    if not heads_path.is_file():
        raise TinyCLIPError(f"no LiT teacher built at {out}; train a recipe with teacher: {{lit: {profile}}} first")
    data_dir = profile_dir(profile, data_root)
    fingerprint = _data_fingerprint(data_dir)
    identity = {"heads": file_digest(heads_path), "max_items": None, "data_fingerprint": fingerprint}
    path = out / ITEMS_FILE
    if path.is_file():
        stored = json.loads(path.read_text())
        if stored.get("identity") == identity:
            return stored
    teacher = load_lit_teacher(heads_path, towers)
    if teacher.config.image_size != image_size:
        raise TinyCLIPError(f"the LiT teacher at {out} was built at {teacher.config.image_size} px, not {image_size}")
    items: dict[str, dict[str, list[int]]] = {}
    _evaluate_memoized(teacher, out, data_dir, fingerprint, items=items)
    return _write_items(out, identity, items, teacher)


def evaluate_teacher(teacher: LiTTeacher, eval_root: str | Path, tasks: Sequence[str] = ("fmnist", "tux", "openmoji"),
                     batch_size: int = 256, max_items: int | None = None,
                     items: dict | None = None) -> dict[str, dict[str, float]]:
    """The students' metrics (:func:`tinyclip.eval.evaluate_model`, clip-benchmark) for the LiT teacher; ``items``,
    when given, is filled with the per-item outcomes as a student's evaluation fills them."""
    from ..eval import evaluate_model
    return evaluate_model(teacher, teacher.preprocess, teacher.tokenizer, eval_root, tasks=tasks,
                          batch_size=batch_size, max_items=max_items, items=items)
