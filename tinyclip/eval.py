"""Evaluation (paper section 4): zero-shot classification and image<->text retrieval, via clip-benchmark.

Metrics come from clip-benchmark's in-process functions (``zeroshot_classification.evaluate``: acc1, acc5,
mean per-class recall; ``zeroshot_retrieval.evaluate``: recall@1/5/10 in the CLIP-paper sense) on the
evaluation sets a data build writes in clip-benchmark's ``wds/`` layout:

* ``fmnist``: **in-domain prompted classification** (Fashion-MNIST test by text prompts; its train images
  with the same templates are in the training mix): the mini stand-in for ImageNet zero-shot, never to be
  called zero-shot transfer;
* ``tux``: held-out Tux Paint stamps, retrieval (no test caption seen in training);
* ``openmoji``: cross-style retrieval (OpenMoji art, names taught by Noto emoji, never trained on);
* ``imagenet1k`` when a path is given: zero-shot classification with the 80 OpenAI templates.

Any ``nn.Module`` with ``encode_image(images)`` and ``encode_text(tokens)`` works (open_clip models, our
pruned students, test oracles); clip-benchmark L2-normalises the features itself.
"""
from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .data.imageops import EvalTransform
from .data.profiles import EVAL_SETS, profile_dir
from .errors import TinyCLIPError, one_line

log = logging.getLogger(__name__)

# numpy is pinned to 2.3.5 (requirements.txt) so that clip-benchmark's accuracy(), which calls float() on a
# 1-element 1-D array, keeps working: numpy >= 2.4 turns that into a TypeError (LAION-AI/CLIP_benchmark#147).
_NUMPY_OK = tuple(int(p) for p in np.__version__.split(".")[:2]) < (2, 4)

RECALL_K = (1, 5, 10)
DESCRIPTIONS = {name: desc for name, (_task, desc) in EVAL_SETS.items()}
DESCRIPTIONS["imagenet1k"] = "ImageNet-1k zero-shot classification, 80 OpenAI prompt templates"


def eval_transform(image_size: int, mean: Sequence[float], std: Sequence[float]) -> EvalTransform:
    """The deterministic evaluation preprocessing: centre on a white square, resize, normalise.

    Identical (bit for bit) to the training loader's ``augment=False`` images, so train and eval agree."""
    return EvalTransform(image_size, mean, std)


def _check_wds(root: Path, name: str, classification: bool) -> None:
    """Fail early, in one line, on an incomplete evaluation set (clip-benchmark would fail obscurely)."""
    nshards_file = root / "test" / "nshards.txt"
    if not nshards_file.is_file():
        raise TinyCLIPError(f"evaluation set {name} not found at {root} (no test/nshards.txt); build the data set "
                            f"first (tinyclip data build --profile ...)")
    try:
        nshards = int(nshards_file.read_text().strip())
    except ValueError:
        raise TinyCLIPError(f"{nshards_file} does not hold a shard count; rebuild the data set") from None
    missing = [i for i in range(nshards) if not (root / "test" / f"{i}.tar").is_file()]
    if missing:
        raise TinyCLIPError(f"missing shard {root / 'test' / f'{missing[0]}.tar'} of evaluation set {name} "
                            f"({len(missing)} of {nshards} missing); rebuild the data set with --force")
    if classification:
        for f in ("classnames.txt", "zeroshot_classification_templates.txt"):
            if not (root / f).is_file():
                raise TinyCLIPError(f"evaluation set {name} at {root} lacks {f}; rebuild the data set")


class _Counting:
    """A data loader wrapper that counts the images it served (clip-benchmark only iterates and reads .dataset)
    and keeps each batch's labels (classification) or caption counts (retrieval) for per-item outcomes."""

    def __init__(self, loader):
        self.loader, self.dataset, self.n = loader, loader.dataset, 0
        self.labels: list = []

    def __iter__(self):
        self.labels = []
        for batch in self.loader:
            self.n += len(batch[0])
            second = batch[1]
            self.labels.append(second.cpu() if torch.is_tensor(second) else [len(texts) for texts in second])
            yield batch


class _Recorder(torch.nn.Module):
    """Passes ``encode_image`` / ``encode_text`` through to a model and keeps their outputs in call order, so the
    per-item outcomes are computed from the very features clip-benchmark scored (no second forward pass)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        self.images: list[torch.Tensor] = []
        self.texts: list[torch.Tensor] = []

    def encode_image(self, images, *args, **kwargs):
        out = self.model.encode_image(images, *args, **kwargs)
        self.images.append(out.detach().float().cpu())
        return out

    def encode_text(self, tokens, *args, **kwargs):
        out = self.model.encode_text(tokens, *args, **kwargs)
        self.texts.append(out.detach().float().cpu())
        return out


def _normalize(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x, dim=-1)


def classification_items(recorder: _Recorder, labels: list) -> dict[str, list[int]]:
    """Per test image: 1 when the top-1 class (clip-benchmark's rule: prompt-averaged class embeddings) is right."""
    classifier = torch.stack([_normalize(_normalize(t).mean(0)) for t in recorder.texts], dim=1)
    logits = 100.0 * _normalize(torch.cat(recorder.images)) @ classifier
    target = torch.cat(labels)
    return {"correct": (logits.argmax(1) == target).int().tolist()}


def retrieval_items(recorder: _Recorder, captions_per_image: list) -> dict[str, list[int]]:
    """Per item, the 0-based rank of the right answer: ``i2t_rank`` per image (its best caption among all captions),
    ``t2i_rank`` per caption (its image among all images); recall@k is the share of ranks below k."""
    counts = [c for batch in captions_per_image for c in batch]
    image_of_text = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    scores = _normalize(torch.cat(recorder.texts)) @ _normalize(torch.cat(recorder.images)).t()  # texts x images
    positive = scores[torch.arange(len(scores)), image_of_text]
    t2i = (scores > positive[:, None]).sum(1)
    text_ranks = (scores[:, image_of_text] > positive[None, :]).sum(0)  # each caption's rank for its own image
    i2t = torch.full((len(counts),), len(scores), dtype=torch.long)
    i2t = i2t.scatter_reduce(0, image_of_text, text_ranks, reduce="amin")
    return {"i2t_rank": i2t.tolist(), "t2i_rank": t2i.tolist()}


def retrieval_mean_recall(items: dict[str, list[int]], ks: Sequence[int] = RECALL_K) -> np.ndarray:
    """Per item: the mean over k of recall@k in both directions (one caption per image, as in every evaluation set
    built here), so its mean over items is the retrieval summary (mean of R@1, R@5, R@10, I→T and T→I)."""
    i2t, t2i = np.asarray(items["i2t_rank"]), np.asarray(items["t2i_rank"])
    if len(i2t) != len(t2i):
        raise TinyCLIPError("per-item retrieval summary needs one caption per image")
    return np.mean([np.mean([r < k for k in ks], axis=0) for r in (i2t, t2i)], axis=0)


def _loader(dataset, batch_size: int, max_items: int | None) -> _Counting:
    classes, templates = getattr(dataset, "classes", None), getattr(dataset, "templates", None)
    if max_items is not None:
        dataset = dataset.slice(max_items)
    batched = dataset.batched(batch_size)
    batched.classes, batched.templates = classes, templates  # clip-benchmark reads dataloader.dataset.classes
    return _Counting(torch.utils.data.DataLoader(batched, batch_size=None, num_workers=0))


def _imagenet_dataset(root: Path, transform):
    """ImageNet val as a clip-benchmark wds folder (test/nshards.txt) or a torchvision ImageNet folder."""
    import clip_benchmark.datasets.builder as cb

    meta_dir = Path(cb.__file__).parent
    if (root / "test" / "nshards.txt").is_file():
        _check_wds(root, "imagenet1k", classification=False)
        ds = cb.build_wds_dataset("imagenet1k", transform, split="test", data_dir=str(root))
        if not ds.classes:
            ds.classes = json.loads((meta_dir / "en_classnames.json").read_text())["imagenet1k"]
        if not ds.templates:
            ds.templates = json.loads((meta_dir / "en_zeroshot_classification_templates.json").read_text())["imagenet1k"]
        return ds
    if not root.is_dir():  # clip-benchmark would try to download ImageNet into a missing folder: never
        raise TinyCLIPError(f"ImageNet folder {root} does not exist; give a clip-benchmark wds folder or a "
                            f"torchvision ImageNet root (ILSVRC2012 devkit + val)")
    try:
        return cb.build_dataset("imagenet1k", root=str(root), transform=transform, split="test",
                                task="zeroshot_classification")
    except (RuntimeError, OSError, AssertionError) as exc:
        raise TinyCLIPError(f"cannot read ImageNet at {root} ({one_line(exc)}); expected a torchvision "
                            f"ImageNet root or a clip-benchmark wds folder") from None


def _clean(metrics: dict) -> dict[str, float]:
    return {k: (None if isinstance(v, float) and math.isnan(v) else float(v)) for k, v in metrics.items()}


def evaluate_model(model: torch.nn.Module, preprocess: Callable, tokenizer: Callable, eval_root: str | Path,
                   tasks: Sequence[str] = ("fmnist", "tux", "openmoji"), batch_size: int = 256,
                   device: str = "cpu", imagenet_root: str | Path | None = None, max_items: int | None = None,
                   items: dict[str, dict[str, list[int]]] | None = None) -> dict[str, dict[str, float]]:
    """Evaluate ``model`` on the named evaluation sets under ``eval_root`` (and ImageNet if a path is given).

    Returns ``{"fmnist": {"acc1", "acc5", "mean_per_class_recall", "n"}, "tux": {"image_retrieval_recall@1",
    ..., "text_retrieval_recall@10", "n"}, ...}``. ``max_items`` evaluates only the first N items of each set
    (the sets are stored in a fixed shuffled order, so a prefix is a fair subset); ``device`` is "cpu" or
    "cuda" and the model must already be there. Features are computed in fp32 (amp off).

    ``items``, when given, is filled with the per-item outcomes of each set (:func:`classification_items`,
    :func:`retrieval_items`), computed from the features clip-benchmark scored; they reproduce its metrics."""
    from clip_benchmark.datasets.builder import build_dataset
    from clip_benchmark.metrics import zeroshot_classification as zsc
    from clip_benchmark.metrics import zeroshot_retrieval as zsr

    if not _NUMPY_OK:
        raise TinyCLIPError(f"numpy {np.__version__} breaks clip-benchmark's accuracy (CLIP_benchmark#147); "
                            f"install the pinned numpy==2.3.5")
    unknown = [t for t in tasks if t not in EVAL_SETS]
    if unknown:
        raise TinyCLIPError(f"unknown evaluation task(s) {unknown}; choose from {', '.join(EVAL_SETS)}")
    if max_items is not None and max_items <= 0:
        raise TinyCLIPError(f"max_items must be positive, got {max_items}")
    dev = torch.device(device).type  # clip-benchmark passes it to torch.autocast: "cpu"/"cuda", not "cuda:0"
    eval_root = Path(eval_root)
    was_training = model.training
    model.eval()
    results: dict[str, dict[str, float]] = {}
    try:
        for name in tasks:
            task = EVAL_SETS[name][0]
            root = eval_root / name
            _check_wds(root, name, classification=task == "zeroshot_classification")
            t0 = time.time()
            ds = build_dataset(f"wds/{name}", root=str(root), transform=preprocess, split="test", task=task)
            loader = _loader(ds, batch_size, max_items)
            scored = _Recorder(model) if items is not None else model
            if task == "zeroshot_classification":
                metrics = zsc.evaluate(scored, loader, tokenizer, ds.classes, ds.templates, device=dev, amp=False)
            else:
                metrics = zsr.evaluate(scored, loader, tokenizer, device=dev, amp=False, recall_k_list=list(RECALL_K))
            if loader.n == 0:
                raise TinyCLIPError(f"evaluation set {name} at {root} is empty; rebuild the data set")
            results[name] = {**_clean(metrics), "n": float(loader.n)}
            if items is not None:
                items[name] = (classification_items(scored, loader.labels) if task == "zeroshot_classification"
                               else retrieval_items(scored, loader.labels))
            log.info("%s: %s (%.1f s)", name, results[name], time.time() - t0)
        if imagenet_root is not None:
            ds = _imagenet_dataset(Path(imagenet_root), preprocess)
            if hasattr(ds, "batched"):
                loader = _loader(ds, batch_size, max_items)
            else:
                classes, templates = ds.classes, ds.templates
                if max_items is not None:
                    ds = torch.utils.data.Subset(ds, range(min(max_items, len(ds))))
                    ds.classes, ds.templates = classes, templates
                loader = _Counting(torch.utils.data.DataLoader(ds, batch_size=batch_size, num_workers=0))
            metrics = zsc.evaluate(model, loader, tokenizer, ds.classes, ds.templates, device=dev, amp=False)
            results["imagenet1k"] = {**_clean(metrics), "n": float(loader.n)}
    finally:
        model.train(was_training)
    return results


# --------------------------------------------------------------------------------------------------- CLI
def load_open_clip(model_name: str, weights: str | None = None, device: str = "cpu"):
    """(model, eval preprocess, tokenizer) for a registered name or ``local-dir:DIR``, optional weights file."""
    import open_clip

    import tinyclip  # noqa: F401  (registers the project's model configs)

    if weights is not None and not Path(weights).is_file():
        raise TinyCLIPError(f"weights file {weights} does not exist")
    if model_name.startswith("local-dir:") and not Path(model_name[len("local-dir:"):]).is_dir():
        raise TinyCLIPError(f"model folder {model_name[len('local-dir:'):]} does not exist")
    if not model_name.startswith("local-dir:"):
        from .zoo import model_config

        model_config(model_name)   # an unknown name: one line that says where the known ones are listed
    try:
        model = open_clip.create_model(model_name, pretrained=weights, device=device)
        tokenizer = open_clip.get_tokenizer(model_name)
    except (RuntimeError, ValueError, KeyError, FileNotFoundError) as exc:
        raise TinyCLIPError(f"cannot load model {model_name!r}: {one_line(exc)}") from None
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
    mean = cfg.get("mean", open_clip.OPENAI_DATASET_MEAN)
    std = cfg.get("std", open_clip.OPENAI_DATASET_STD)
    return model, eval_transform(int(size), mean, std), tokenizer


def _cli_eval(args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    eval_root = Path(args.eval_root) if args.eval_root else profile_dir(args.profile, args.data_root) / "eval"
    tasks = [t for t in args.tasks.split(",") if t] if args.tasks else list(EVAL_SETS)
    if args.format == "clip_benchmark" and not args.out:
        raise TinyCLIPError("--format clip_benchmark writes one result file per data set: give the folder as --out")
    t0 = time.time()
    model, preprocess, tokenizer = load_open_clip(args.model, args.weights, args.device)
    results = evaluate_model(model, preprocess, tokenizer, eval_root, tasks=tasks, batch_size=args.batch_size,
                             device=args.device, imagenet_root=args.imagenet, max_items=args.max_items)
    if args.format == "clip_benchmark":
        paths = write_clip_benchmark_results(results, args.out, model=args.model, pretrained=args.weights)
        print(json.dumps({"format": "clip_benchmark", "files": [str(p) for p in paths]}))
        return 0
    report = {"model": args.model, "weights": args.weights, "profile": args.profile, "eval_root": str(eval_root),
              "results": results, "descriptions": {k: DESCRIPTIONS[k] for k in results},
              "seconds": round(time.time() - t0, 1)}
    text = json.dumps(report, indent=1)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(text + "\n")
        tmp.replace(out)
    print(text)
    return 0


def write_clip_benchmark_results(results: dict[str, dict[str, float]], out_dir: str | Path, *, model: str,
                                 pretrained: str | None, language: str = "en") -> list[Path]:
    """One clip_benchmark result file per data set (``clip_benchmark eval``'s own JSON: ``dataset``, ``model``,
    ``pretrained``, ``task``, ``metrics``, ``language``), named by its default output template
    ``{dataset}_{pretrained}_{model}_{language}_{task}.json``, so ``clip_benchmark build`` and its users' tooling
    read our results. The item count ``n`` stays out of ``metrics``, as clip_benchmark reports none."""
    from .runs import atomic_write_text

    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TinyCLIPError(f"cannot create the result folder {out} ({exc.strerror}); choose a writable --out") \
            from None
    # clip_benchmark names a weights file by its basename; a local-dir model carries its own weights
    pretrained_slug = Path(pretrained).name if pretrained else "local-dir" if model.startswith("local-dir:") \
        else "random-init"
    model_slug = model.replace("/", "_")
    written = []
    for name, metrics in results.items():
        dataset = f"wds/{name}" if name in EVAL_SETS else name
        task = EVAL_SETS[name][0] if name in EVAL_SETS else "zeroshot_classification"
        dump = {"dataset": dataset, "model": model, "pretrained": pretrained_slug, "task": task,
                "metrics": {k: v for k, v in metrics.items() if k != "n"}, "language": language}
        path = out / f"{dataset.replace('/', '_')}_{pretrained_slug}_{model_slug}_{language}_{task}.json"
        atomic_write_text(path, json.dumps(dump))
        written.append(path)
    return written
