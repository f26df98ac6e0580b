"""Distillation-step training throughput in one process: our trainer vs a plain student step vs open_clip_train.

Rows (pairs/s = batch / median step time over the timed steps, after untimed warm-up steps):

* ``tinyclip_cached``: our distillation step with every batch's teacher embeddings already in a
  :class:`tinyclip.teacher_cache.TeacherEmbeddingCache` (a cache hit: no teacher forward). The cache is filled
  before timing by the trainer's own miss path (``Teacher.embed`` over the same batches); the JSON records that
  the timed steps had no miss.
* ``tinyclip_uncached``: the same step with a frozen teacher forward each step (``teacher_cache: false``).
* ``student_contrastive``: a plain contrastive step of the student alone (no teacher), same settings otherwise.
* ``tinyclip_uncached_oc_loss``: ``tinyclip_uncached`` with open_clip_train's loss (see below); the row the
  ``open_clip_train`` ratio is taken against.
* ``open_clip_train``: ``open_clip_train.main.main(argv)`` with ``--distill-model`` (the teacher), the same
  student model and starting weights, batch, data shards, precision, AdamW hyper-parameters, grad clip, lr
  warm-up, on CPU in this process with ``--workers 0``.

``tinyclip_cached`` and ``tinyclip_uncached`` use the affinity-mimicking loss with the logit scale fixed at 50, as
in ``recipes/mini_manual.yaml`` (``student_contrastive``: the contrastive loss at the same fixed scale). Both sets
train with augmentation and 4 fixed views per sample, the mini recipe's data settings (the smoke recipe has no
augmentation). open_clip_train's distillation loss is ``DistillClipLoss`` = contrastive + the mean
of the two affinity directions, with the student's learned scale and the teacher's own scale; the row compared with
it therefore uses ``loss: {mode: contrastive+affinity, affinity_reduction: mean}`` with a learned logit scale
(clamped to ln 100 after each step, as both trainers do).

How our step is measured. Each of our rows is a real :func:`tinyclip.train.train_stage` run (a scratch run folder,
no evaluation) over batches ``0 .. warmup+steps-1``: a stage parsed by :func:`tinyclip.recipe.parse_recipe`, its
resolved config, the trainer's ``PairSource``, ``Teacher`` (with or without the cache) and the same starting
weights. The data source is wrapped to stamp each batch request; step ``i`` lasts from its batch request to the
trainer's ``on_step`` hook at its end (its per-step bookkeeping included), the batch fetch being its data part.
``tinyclip_cached_default_attention`` runs ``tinyclip.train._forward_context`` with ``math_attention=False``
(autocast only), so torch picks its default (fused flash) CPU attention kernel.

How open_clip_train is measured. ``open_clip_train.main.train_one_epoch`` is wrapped so that, before the epoch
starts, the train ``DataInfo``'s ``dataloader`` is replaced by a transparent proxy that stamps the time (wall
and process CPU) at which the loop asks for each batch and at which the batch arrives. Step ``i`` lasts from
request ``i`` to request ``i + 1`` (the loop asks for the next batch right after ``optimizer.step``, the logit-scale
clamp and its logging); the part from arrival to the next request is the compute, the rest the data wait. This
needs nothing from the loop but that it iterates ``data["train"].dataloader``, so it is robust to open_clip_train's
internals and excludes its setup (model building, data pipeline, checkpoint at the end). open_clip_train's own
logged ``Batch (t)`` (an average since its previous log line) is also parsed from its log as a cross-check.

Both data paths are timed: ``pairs_per_s`` covers the whole step including fetching the batch (our in-memory
``PairSource`` with its augmentation; open_clip_train's webdataset pipeline decoding JPEGs in this process,
``--workers 0``), ``compute_pairs_per_s`` the step without the batch fetch. Both train on the same shards
(``data/<profile>/train/shard-*.tar``), but draw different samples: ours by the build's source weights with 4
fixed augmentation views, open_clip_train in shard order through its shuffle buffer with its own
RandomResizedCrop. Also compared, deliberately: on CPU our forward runs under
``sdpa_kernel(SDPBackend.MATH)`` (``tinyclip.train._forward_context``; the fused CPU flash-attention backward is
slow), open_clip_train uses torch's default attention kernel.

Our rows run one after the other, then open_clip_train. Ratios (``ratios``, and the same from compute-only
and CPU time): ``tinyclip_uncached_over_open_clip_train`` (from ``tinyclip_uncached_oc_loss``; target >= 1),
``tinyclip_cached_over_student_contrastive`` (target >= 1/1.1), ``tinyclip_cached_over_tinyclip_uncached``, and
``tinyclip_uncached_affinity_over_open_clip_train`` (the affinity-loss row, for reference) and
``math_attention_over_default_attention`` (the cached step with our CPU attention kernel vs torch's default).

On a shared CPU read the ratios (and the CPU-time ratios, which other processes disturb less), not the absolute
numbers. Writes JSON to ``--out`` (default ``runs/bench/distill_step_<set>.json``) and prints it.

    .venv/bin/python benchmarks/bench_distill_step.py --set mini --threads 2
    .venv/bin/python benchmarks/bench_distill_step.py --set smoke --steps 4 --warmup 1 --out /tmp/bench.json
"""
from __future__ import annotations

import argparse
import copy
import datetime as _dt
import functools
import json
import logging
import math
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

SETS: dict[str, dict[str, Any]] = {
    # quick check and tests: toy models, small batch, fp32
    "smoke": {"profile": "smoke", "teacher": "TinyCLIP-smoke-teacher", "student": "TinyCLIP-smoke-S50",
              "batch": 32, "precision": "fp32", "steps": 8, "warmup": 2, "lr": 1.0e-3},
    # the mini profile at recipes/mini_manual.yaml's settings (batch 256, bf16 autocast, lr 5e-4)
    "mini": {"profile": "mini", "teacher": "TinyCLIP-mini-teacher", "student": "TinyCLIP-mini-S50",
             "batch": 256, "precision": "bf16", "steps": 20, "warmup": 3, "lr": 5.0e-4},
}
FIXED_50 = {"mode": "fixed", "value": 50.0}
# our rows: stage name -> (loss, logit scale, teacher cache)
VARIANTS: dict[str, tuple[Any, dict[str, Any], bool]] = {
    "tinyclip_cached": ("affinity", FIXED_50, True),
    "tinyclip_uncached": ("affinity", FIXED_50, False),
    "student_contrastive": ("contrastive", FIXED_50, False),
    "tinyclip_uncached_oc_loss": ({"mode": "contrastive+affinity", "affinity_reduction": "mean"},
                                  {"mode": "learned", "max": 100.0}, False),
    # the cached step with torch's default attention kernel (the fused CPU flash kernel) instead of the math one
    "tinyclip_cached_default_attention": ("affinity", FIXED_50, True),
}
DEFAULT_ATTENTION = {"tinyclip_cached_default_attention"}
FIXED_VIEWS = 4          # as recipes/mini_manual.yaml: augmentation on, 4 fixed views per sample (teacher cache)
CACHED_TARGET = 1 / 1.1  # a cached distillation step costs at most 1.1x a plain contrastive student step
OC_PRECISION = {"fp32": "fp32", "bf16": "amp_bf16"}  # open_clip_train's name for the same autocast


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _summary(batch: int, steps: list[dict[str, float]]) -> dict[str, Any]:
    """Medians over timed steps (each a dict of step_s, data_s, compute_s, cpu_s, cpu_compute_s)."""
    med = {key: _median([s[key] for s in steps]) for key in ("step_s", "data_s", "compute_s", "cpu_s",
                                                             "cpu_compute_s")}
    return {"pairs_per_s": batch / med["step_s"], "compute_pairs_per_s": batch / med["compute_s"],
            "median_step_s": med["step_s"], "median_data_s": med["data_s"], "median_compute_s": med["compute_s"],
            "min_step_s": min(s["step_s"] for s in steps), "median_cpu_step_s": med["cpu_s"],
            "median_cpu_compute_s": med["cpu_compute_s"], "timed_steps": len(steps)}


# ============================================================================================== our trainer
def _recipe(spec: dict[str, Any], args: argparse.Namespace, total_steps: int):
    """A recipe whose stages are the benchmark's variants, parsed and validated like any recipe file."""
    from tinyclip.recipe import parse_recipe

    data = {"profile": spec["profile"], "root": str(args.data) if args.data else None, "augment": True,
            "fixed_views": FIXED_VIEWS, "loader": "memory"}
    raw = {"name": f"bench-distill-step-{args.set}", "seed": args.seed, "device": "cpu",
           "teacher": {"model": spec["teacher"], "weights": None},
           "defaults": {"data": data, "precision": args.precision, "batch": args.batch, "steps": total_steps,
                        "lr": spec["lr"], "warmup": 1},
           "stages": [{"name": name, "student": spec["student"], "init": "random", "loss": loss,
                       "logit_scale": scale, "teacher_cache": cached}
                      for name, (loss, scale, cached) in VARIANTS.items()]}
    return parse_recipe(raw)


class _TimedData:
    """The trainer's data source, with the wall and CPU time spent inside ``batch`` recorded per step."""

    def __init__(self, data: Any):
        self.data = data
        self.marks: list[tuple[float, float, float, float]] = []  # (wall, cpu) at request and at return

    def __getattr__(self, name: str) -> Any:
        return getattr(self.data, name)

    def batch(self, *args: Any, **kwargs: Any):
        w0, c0 = time.perf_counter(), time.process_time()
        out = self.data.batch(*args, **kwargs)
        self.marks.append((w0, c0, time.perf_counter(), time.process_time()))
        return out


def _time_stage(run_root: Path, stage, cfg: dict, student: torch.nn.Module, teacher, data, seed: int,
                device: str, default_attention: bool = False) -> list[dict[str, float]]:
    """Train ``stage`` with the trainer's own :func:`tinyclip.train.train_stage` (into a scratch run folder, no
    evaluation) and return the per-step timings: step ``i`` lasts from its batch request to the ``on_step`` call
    that ends it (its metrics bookkeeping included); the batch fetch is its data part."""
    from tinyclip import train
    from tinyclip.runs import Run

    timed = _TimedData(data)
    ends: list[tuple[float, float, float]] = []

    def on_step(step: int, record: dict) -> None:
        ends.append((time.perf_counter(), time.process_time(), record["loss"]))

    previous, previous_root = train._forward_context, os.environ.get("TINYCLIP_RUNS_ROOT")
    if default_attention:  # autocast only: torch picks the attention kernel (the trainer forces math on CPU)
        train._forward_context = functools.partial(previous, math_attention=False)
    try:
        os.environ["TINYCLIP_RUNS_ROOT"] = str(run_root)
        run = Run(cfg, labels={"benchmark": "distill_step", "stage": stage.name})
        run.reset()
        run.start(seed, device)
        train.train_stage(run, stage, seed=seed, teacher=teacher, student=student, data=timed,
                          evaluate=lambda model, items=None: {}, world=train.World(), device=device, on_step=on_step)
    finally:
        train._forward_context = previous
        if previous_root is None:
            os.environ.pop("TINYCLIP_RUNS_ROOT", None)
        else:
            os.environ["TINYCLIP_RUNS_ROOT"] = previous_root
    steps = []
    for (w0, c0, w1, c1), (w2, c2, loss) in zip(timed.marks, ends):
        steps.append({"step_s": w2 - w0, "data_s": w1 - w0, "compute_s": w2 - w1, "cpu_s": c2 - c0,
                      "cpu_compute_s": c2 - c1, "loss": loss})
    return steps


# ============================================================================================== open_clip_train
class _TimedLoader:
    """A transparent proxy of open_clip_train's dataloader that stamps each batch request and arrival."""

    def __init__(self, loader: Any, marks: list[tuple]):
        self._loader, self._marks = loader, marks

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)

    def __len__(self) -> int:
        return len(self._loader)

    def __iter__(self):
        iterator = iter(self._loader)
        while True:
            asked = (time.perf_counter(), time.process_time())
            try:
                batch = next(iterator)
            except StopIteration:
                self._marks.append((*asked, None, None))
                return
            self._marks.append((*asked, time.perf_counter(), time.process_time()))
            yield batch


def _shard_pattern(train: Path) -> tuple[str, int]:
    """open_clip_train's ``--train-data`` for the shards in ``sizes.json`` (a brace pattern when the names are
    consecutive numbers, else ``::``-joined paths) and their sample count."""
    sizes = json.loads((train / "sizes.json").read_text())
    names = sorted(sizes)
    parsed = [re.fullmatch(r"(.*?)(\d+)\.tar", name) for name in names]
    if all(parsed) and len({(m.group(1), len(m.group(2))) for m in parsed}) == 1:
        numbers = [int(m.group(2)) for m in parsed]
        if numbers == list(range(numbers[0], numbers[0] + len(numbers))):
            prefix = parsed[0].group(1)
            pattern = (str(train / names[0]) if len(names) == 1 else
                       f"{train}/{prefix}{{{parsed[0].group(2)}..{parsed[-1].group(2)}}}.tar")
            return pattern, sum(sizes.values())
    return "::".join(str(train / name) for name in names), sum(sizes.values())


def _run_open_clip_train(argv: list[str], log_dir: Path, verbose: bool) -> tuple[list[tuple], dict[str, Any]]:
    """Run ``open_clip_train.main.main(argv)`` with the timing proxy; return the marks and what the loop got."""
    import open_clip_train.main as oc_main

    marks: list[tuple] = []
    seen: dict[str, Any] = {}
    original_epoch, original_logging = oc_main.train_one_epoch, oc_main.setup_logging
    root = logging.getLogger()
    handlers_before = list(root.handlers)
    levels_before = {name: lg.level for name, lg in root.manager.loggerDict.items() if isinstance(lg, logging.Logger)}
    root_level = root.level

    def timed_epoch(*a, **kw):
        names = ("model", "data", "loss", "epoch", "optimizer", "scaler", "scheduler", "dist_model", "args")
        bound = {**dict(zip(names, a)), **kw}
        data = bound["data"]
        seen.update(loss=type(bound["loss"]).__name__, distill=bound["dist_model"] is not None,
                    precision=bound["args"].precision, batch_size=bound["args"].batch_size,
                    num_batches=data["train"].dataloader.num_batches, student=type(bound["model"]).__name__)
        data["train"].dataloader = _TimedLoader(data["train"].dataloader, marks)
        return original_epoch(*a, **kw)

    def quiet_logging(log_file, level, *a, **kw):
        original_logging(log_file, level, *a, **kw)
        if not verbose:  # keep its log file only: its console output is INFO lines, the whole model included
            for handler in list(root.handlers):
                if not isinstance(handler, logging.FileHandler):
                    root.removeHandler(handler)

    # setup_logging sets the root logger and *every* logger (turning placeholders into loggers) to INFO and adds
    # handlers to the root: all of that is undone afterwards, so this process logs as before
    oc_main.train_one_epoch, oc_main.setup_logging = timed_epoch, quiet_logging
    try:
        rc = oc_main.main(argv)
    finally:
        oc_main.train_one_epoch, oc_main.setup_logging = original_epoch, original_logging
        for handler in list(root.handlers):
            if handler not in handlers_before:
                root.removeHandler(handler)
                handler.close()
        for handler in handlers_before:
            if handler not in root.handlers:
                root.addHandler(handler)
        root.setLevel(root_level)
        for name, logger in list(root.manager.loggerDict.items()):
            if isinstance(logger, logging.Logger):
                logger.setLevel(levels_before.get(name, logging.NOTSET))
    if rc not in (None, 0):
        raise RuntimeError(f"open_clip_train.main.main returned {rc}; see {log_dir}")
    if not marks:
        raise RuntimeError("open_clip_train did not iterate its train dataloader (is train_one_epoch still the loop "
                           "that main() calls?)")
    logged = None
    for out_log in log_dir.glob("*/out.log"):
        found = re.findall(r"Batch \(t\): ([\d.]+), ([\d.eE+-]+)/s", out_log.read_text())
        if found:
            logged = {"batch_t_s": float(found[-1][0]), "samples_per_s": float(found[-1][1])}
    seen["logged_last_window"] = logged
    return marks, seen


def _open_clip_steps(marks: list[tuple], warmup: int) -> list[dict[str, float]]:
    steps = []
    for (t_ask, c_ask, t_got, c_got), (t_next, c_next, *_) in zip(marks, marks[1:]):
        if t_got is None:
            break
        steps.append({"step_s": t_next - t_ask, "data_s": t_got - t_ask, "compute_s": t_next - t_got,
                      "cpu_s": c_next - c_ask, "cpu_compute_s": c_next - c_got})
    return steps[warmup:]


# ============================================================================================== main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", choices=sorted(SETS), default="mini")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per row (default: the set's)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps per row first (default: the set's)")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default: the set's)")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default=None,
                        help="bf16 = bf16 autocast (open_clip_train: amp_bf16); default: the set's")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--data", type=Path, default=None,
                        help="built data set folder (default: data/<profile>; smoke is built there if missing)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-open-clip", action="store_true", help="leave out the open_clip_train row")
    parser.add_argument("--verbose", action="store_true", help="show open_clip_train's console log")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON output (default: runs/bench/distill_step_<set>.json)")
    args = parser.parse_args(argv)

    import open_clip
    import webdataset

    import tinyclip  # noqa: F401  (registers the model configs, also for open_clip_train in this process)
    from tinyclip.recipe import resolve_stage
    from tinyclip.runs import atomic_write_json, provenance, runs_root
    from tinyclip.teacher_cache import TeacherEmbeddingCache
    from tinyclip.runner import _data_source, load_model
    from tinyclip.train import Teacher, _forward_context

    spec = SETS[args.set]
    args.batch = args.batch or spec["batch"]
    args.precision = args.precision or spec["precision"]
    steps = spec["steps"] if args.steps is None else args.steps
    warmup = spec["warmup"] if args.warmup is None else args.warmup
    if steps < 1 or warmup < 0 or args.batch < 2:
        parser.error("need --steps >= 1, --warmup >= 0 and --batch >= 2")
    if not webdataset.__version__.startswith("0.2."):
        # docs/design.md §3: open_clip_train's loader breaks on webdataset 1.x (KeyError 'fname')
        parser.error(f"open_clip_train needs webdataset 0.2.x (<= 0.2.86); this venv has {webdataset.__version__}")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cpu"
    out = args.out or runs_root() / "bench" / f"distill_step_{args.set}.json"
    command = " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])])
    load_start = os.getloadavg()
    total = warmup + steps  # batches per row

    recipe = _recipe(spec, args, total)
    root = recipe.stages[0].data.resolved_root()
    if not (root / "train" / "sizes.json").is_file():
        if spec["profile"] != "smoke" or args.data:
            parser.error(f"no built data set at {root}; build it first (tinyclip data build --profile "
                         f"{spec['profile']})")
        from tinyclip.data import build

        build("smoke")
    teacher_id = {"model": spec["teacher"], "weights": None, "seed": args.seed}
    configs = {s.name: resolve_stage(recipe, i, teacher=teacher_id, previous=None, device=device, world_size=1)
               for i, s in enumerate(recipe.stages)}
    stages = {s.name: s for s in recipe.stages}
    first = recipe.stages[0]
    cfg0 = configs[first.name]

    with tempfile.TemporaryDirectory(prefix="bench_distill_step_") as tmp_name:
        tmp = Path(tmp_name)
        # the same random weights for every row and for open_clip_train (saved as its --pretrained files)
        torch.manual_seed(args.seed)
        teacher_model = load_model(spec["teacher"], None).to(device).eval().requires_grad_(False)
        torch.manual_seed(args.seed)
        base_student = load_model(spec["student"], None)
        torch.save(teacher_model.state_dict(), tmp / "teacher.pt")
        torch.save(base_student.state_dict(), tmp / "student.pt")

        # data: the trainer's source (as run_recipe builds it), shared by all our rows
        preprocess = open_clip.get_model_preprocess_cfg(base_student) or {}
        tokenizer = open_clip.get_tokenizer(first.student)
        mean = tuple(preprocess.get("mean", open_clip.OPENAI_DATASET_MEAN))
        std = tuple(preprocess.get("std", open_clip.OPENAI_DATASET_STD))
        data = _data_source(first, cfg0, tokenizer, mean, std)

        # the teacher-embedding cache, filled by the trainer's miss path for exactly the batches the row will see
        cache = TeacherEmbeddingCache.create(tmp / "teacher_cache", ids=data.sample_ids(),
                                             dim=int(teacher_model.text_projection.shape[1]),
                                             logit_scale=float(teacher_model.logit_scale.exp()),
                                             identity={"benchmark": "distill_step", **teacher_id})
        cached_teacher = Teacher(teacher_model, cache)
        fill_start = time.perf_counter()
        autocast = _forward_context(cfg0["precision"], device)
        for index in range(total):
            images, tokens, ids = data.batch(index, args.batch, args.seed)
            with autocast():
                cached_teacher.embed(images, tokens, ids)
        fill_s = time.perf_counter() - fill_start
        misses_before = cache.misses

        teachers = {"tinyclip_cached": cached_teacher, "tinyclip_cached_default_attention": cached_teacher}
        # our rows, one after the other, each a real train_stage over batches 0..total-1; warm-up steps dropped
        timed: dict[str, list[dict[str, float]]] = {}
        ours_start = time.perf_counter()
        for name, stage in stages.items():
            teacher = teachers.get(name, Teacher(teacher_model))
            steps_run = _time_stage(tmp / "runs", stage, configs[name], copy.deepcopy(base_student), teacher, data,
                                    args.seed, device, default_attention=name in DEFAULT_ATTENTION)
            timed[name] = steps_run[warmup:]
        ours_s = time.perf_counter() - ours_start
        cache_misses_timed = cache.misses - misses_before

        rows: dict[str, dict[str, Any]] = {}
        for name, stage in stages.items():
            cached = VARIANTS[name][2]
            rows[name] = {**_summary(args.batch, timed[name]), "trainer": "tinyclip", "loss": stage.loss,
                          "logit_scale": stage.logit_scale,
                          "teacher": None if name == "student_contrastive" else ("cache" if cached else "forward"),
                          "attention_kernel": ("torch default" if name in DEFAULT_ATTENTION else
                                               "math (sdpa_kernel(SDPBackend.MATH), tinyclip.train._forward_context)"),
                          "last_loss": timed[name][-1]["loss"]}

        # open_clip_train: same student, teacher, weights, shards, batch, precision, optimiser settings
        oc_info: dict[str, Any] | None = None
        if not args.skip_open_clip:
            train = root / "train"
            pattern, available = _shard_pattern(train)
            samples = total * args.batch
            if samples > available:
                raise SystemExit(f"open_clip_train needs {samples} samples for {total} batches of {args.batch}; the "
                                 f"shards in {train} hold {available}: lower --steps/--warmup/--batch")
            b1, b2 = cfg0["optim"]["betas"]
            oc_argv = ["--model", first.student, "--pretrained", str(tmp / "student.pt"),
                       "--distill-model", spec["teacher"], "--distill-pretrained", str(tmp / "teacher.pt"),
                       "--dataset-type", "webdataset", "--train-data", pattern, "--train-num-samples", str(samples),
                       "--batch-size", str(args.batch), "--workers", "0", "--device", device,
                       "--precision", OC_PRECISION[args.precision], "--lr", str(first.lr),
                       "--wd", str(first.weight_decay), "--beta1", str(b1), "--beta2", str(b2),
                       "--eps", str(cfg0["optim"]["eps"]), "--warmup", str(first.warmup_steps),
                       "--epochs", "1", "--logs", str(tmp / "oc_logs"), "--name", "bench",
                       "--save-frequency", "0", "--zeroshot-frequency", "0", "--val-frequency", "0",
                       "--report-to", "", "--log-every-n-steps", str(10 ** 9), "--seed", str(args.seed)]
            if first.grad_clip:
                oc_argv += ["--grad-clip-norm", str(first.grad_clip)]
            oc_start = time.perf_counter()
            marks, seen = _run_open_clip_train(oc_argv, tmp / "oc_logs", args.verbose)
            oc_s = time.perf_counter() - oc_start
            if not seen.get("distill") or seen.get("loss") != "DistillClipLoss":
                raise RuntimeError(f"open_clip_train did not distil (loss {seen.get('loss')}); check --distill-*")
            oc_steps = _open_clip_steps(marks, warmup)
            if len(oc_steps) < 1:
                raise RuntimeError(f"open_clip_train ran {len(marks) - 1} steps, fewer than warm-up + 1")
            rows["open_clip_train"] = {**_summary(args.batch, oc_steps), "trainer": "open_clip_train",
                                       "loss": "DistillClipLoss (contrastive + mean of both affinity directions), "
                                               "learned student scale clamped to ln 100, teacher's own scale",
                                       "teacher": "forward", "attention_kernel": "torch default",
                                       "argv": oc_argv, "seen_in_loop": seen, "wall_s_incl_setup": round(oc_s, 2)}
            oc_info = seen

    def ratio(a: str, b: str, key: str = "pairs_per_s") -> float | None:
        return rows[a][key] / rows[b][key] if a in rows and b in rows else None

    def cpu_ratio(a: str, b: str) -> float | None:  # throughput ratio from CPU time per step
        return rows[b]["median_cpu_step_s"] / rows[a]["median_cpu_step_s"] if a in rows and b in rows else None

    pairs = {"tinyclip_uncached_over_open_clip_train": ("tinyclip_uncached_oc_loss", "open_clip_train"),
             "tinyclip_uncached_affinity_over_open_clip_train": ("tinyclip_uncached", "open_clip_train"),
             "tinyclip_cached_over_student_contrastive": ("tinyclip_cached", "student_contrastive"),
             "tinyclip_cached_over_tinyclip_uncached": ("tinyclip_cached", "tinyclip_uncached"),
             "math_attention_over_default_attention": ("tinyclip_cached", "tinyclip_cached_default_attention")}
    ratios = {name: ratio(a, b) for name, (a, b) in pairs.items()}
    targets = {"tinyclip_uncached_over_open_clip_train": 1.0, "tinyclip_cached_over_student_contrastive": CACHED_TARGET}
    prov = provenance(args.seed, device, command=[command])
    result = {
        "benchmark": "distill_step_throughput",
        "set": args.set,
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": prov["git_commit"], "git_dirty": prov["git_dirty"],
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count(), "host": platform.node(), "python": platform.python_version(),
                    "loadavg_start": [round(x, 2) for x in load_start],
                    "loadavg_end": [round(x, 2) for x in os.getloadavg()]},
        "packages": prov["packages"],
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "precision": args.precision,
        "open_clip_train_precision": OC_PRECISION[args.precision],
        "batch": args.batch,
        "teacher_model": spec["teacher"],
        "student_model": spec["student"],
        "data": {"root": str(root), "fixed_views": FIXED_VIEWS, "augment": True},
        "warmup_steps": warmup, "timed_steps": steps,
        "rows": rows,
        "ratios": ratios,
        "ratios_compute_only": {name: ratio(a, b, "compute_pairs_per_s") for name, (a, b) in pairs.items()},
        "ratios_cpu_time": {name: cpu_ratio(a, b) for name, (a, b) in pairs.items()},
        "ratio_rows": {name: list(ab) for name, ab in pairs.items()},
        "targets": {name: {"min": value, "met": None if ratios[name] is None else ratios[name] >= value}
                    for name, value in targets.items()},
        "teacher_cache": {"fill_s": round(fill_s, 2), "filled_rows": cache.filled_count(),
                          "misses_while_timed": cache_misses_timed, "hits": cache.hits},
        "wall_s": {"our_rows": round(ours_s, 2), **({"open_clip_train": rows["open_clip_train"]["wall_s_incl_setup"]}
                                                      if oc_info else {})},
        "notes": ["pairs_per_s: whole step incl. the batch fetch; compute_pairs_per_s: without it",
                  "tinyclip_uncached_over_open_clip_train compares tinyclip_uncached_oc_loss (open_clip_train's "
                  "loss: contrastive+affinity, mean reduction, learned scale) with open_clip_train",
                  "our forward uses the math SDPA kernel on CPU, open_clip_train torch's default kernel",
                  "ratios_cpu_time: from median process CPU time per step (less disturbed by other jobs)"],
        "command": command,
    }
    if cache_misses_timed:
        raise RuntimeError(f"the cached row missed the teacher cache {cache_misses_timed} times while timed")
    text = json.dumps(result, indent=2)
    print(text)
    atomic_write_json(out, result)
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
