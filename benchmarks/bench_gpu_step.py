"""Distillation training at the accelerator's pace: our trainer's input pipeline against its compute ceiling and
against open_clip_train, side by side in one process (issue 11). Runs on CUDA or CPU.

It first writes synthetic webdataset shards big enough for the batch and the loader workers (random-shape
drawings saved as JPEG, a caption each, ``sizes.json`` and ``mix.json`` beside them, so that both our in-memory
loader and the streaming loaders read them), then measures, with the same teacher, student, batch, precision and
loss (affinity mimicking, logit scale fixed at 50, AdamW, gradient clipping; both models random-weight: speed
does not depend on the weights):

* ``ceiling``: the trainer's step on tensors already on the device (teacher forward, student forward and
  backward through ``StudentWithLoss``, AdamW as the trainer builds it), no data pipeline, no host sync;
* ``tinyclip_memory``: :func:`tinyclip.train.train_stage` with the in-memory loader (``PairSource``: on a GPU its
  uint8 images live on the device; on a CPU batches come from a worker process);
* ``tinyclip_stream``: the same with the streaming loader (``StreamSource``: webdataset workers decode JPEGs);
* ``open_clip_train``: ``open_clip_train.main.main`` with ``--distill-model`` on the same shards (its own
  webdataset loader with the same number of workers; its loss is contrastive + distillation).

Options measured against those rows (``--compile``, ``--channels-last`` or by name in ``--rows``):

* ``ceiling_compile`` / ``memory_compile``: the same with the student + loss module under ``torch.compile`` (the
  recipe switch ``compile: true``; the trainer compiles on CUDA only). The compile is paid in the first steps:
  the row records them (``first_steps_s``) and ``ratios`` the steady-state speed-up and the steps after which
  the compile has paid for itself (``compile_break_even_steps``);
* ``ceiling_channels_last``: the ceiling with the teacher, the student and the images in channels-last memory
  format (what NHWC convolutions would give the ResNet students; the ``resnet`` set).

Our rows are read from the run's ``metrics.jsonl``: every ``--log-every`` steps the trainer writes the window's
pairs/s and ``data_wait_s`` (time the loop waited for batches); the first window (start-up) is left out.
open_clip_train's steps are timed by a proxy around its dataloader (benchmarks/bench_distill_step.py). Output:
JSON with pairs/s per row, each row's ratio to the ceiling, data wait vs compute, and the two targets
(GPU: ``tinyclip_memory`` >= 0.85x ceiling and >= 1.0x open_clip_train; CPU: median step <= 1.05x median
compute, i.e. the data wait hidden).

    python benchmarks/bench_gpu_step.py --set paper           # GPU: ViT-B/32 -> TinyCLIP-ViT-61M/32, batch 1024
    python benchmarks/bench_gpu_step.py --set paper --rows ceiling --compile        # torch.compile pays?
    python benchmarks/bench_gpu_step.py --set resnet --rows ceiling --channels-last  # RN50 -> ResNet-30M, NHWC
    python benchmarks/bench_gpu_step.py --set mini --threads 2  # this project's CPU
"""
from __future__ import annotations

import argparse
import io
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

SETS: dict[str, dict[str, Any]] = {
    # paper shapes (the GPU measurement of issue 11)
    "paper": {"teacher": "ViT-B-32", "student": "TinyCLIP-ViT-61M-32-Text-29M", "batch": 1024, "precision": "bf16",
              "images": 22528, "jpeg": 256, "shards": 32, "workers": 8, "log_every": 5, "windows": 4},
    # the ResNet students (RN50 -> TinyCLIP-ResNet-30M-Text-29M): channels-last
    "resnet": {"teacher": "RN50", "student": "TinyCLIP-ResNet-30M-Text-29M", "batch": 512, "precision": "bf16",
               "images": 11264, "jpeg": 256, "shards": 32, "workers": 8, "log_every": 5, "windows": 4},
    # the mini Table 2 models on this project's CPU
    "mini": {"teacher": "TinyCLIP-mini-teacher", "student": "TinyCLIP-mini-S50", "batch": 256, "precision": "bf16",
             "images": 2048, "jpeg": 72, "shards": 8, "workers": 1, "log_every": 1, "windows": 6},
    # a few seconds (the test suite)
    "tiny": {"teacher": "TinyCLIP-smoke-teacher", "student": "TinyCLIP-smoke-S50", "batch": 16, "precision": "fp32",
             "images": 256, "jpeg": 40, "shards": 4, "workers": 1, "log_every": 1, "windows": 4},
}
OC_PRECISION = {"fp32": "fp32", "bf16": "amp_bf16", "amp": "amp"}
ROWS = ("ceiling", "ceiling_compile", "ceiling_channels_last", "memory", "memory_compile", "stream",
        "open_clip_train")
DATA_ROWS = ("memory", "memory_compile", "stream", "open_clip_train")  # rows that read the synthetic shards


# ============================================================================================== data
def write_shards(folder: Path, images: int, side: int, shards: int, seed: int = 0) -> Path:
    """``images`` synthetic JPEG drawings (random rectangles and ellipses on white) with captions naming them, in
    ``shards`` webdataset shards under ``folder/train``; returns ``folder``."""
    import numpy as np
    import webdataset as wds
    from PIL import Image, ImageDraw

    train = folder / "train"
    train.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    colours = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 210), "black": (20, 20, 20),
               "orange": (240, 150, 30), "purple": (140, 60, 170)}
    names = list(colours)
    sizes: dict[str, int] = {}
    per = math.ceil(images / shards)
    for s in range(shards):
        name = f"shard-{s:06d}.tar"
        count = min(per, images - s * per)
        with wds.TarWriter(str(train / name)) as sink:
            for i in range(count):
                img = Image.new("RGB", (side, side), (255, 255, 255))
                draw = ImageDraw.Draw(img)
                words = []
                for _ in range(int(rng.integers(1, 4))):
                    colour = names[int(rng.integers(len(names)))]
                    x0, y0 = (int(v) for v in rng.integers(0, side * 3 // 4, 2))
                    x1, y1 = x0 + int(rng.integers(side // 8, side // 2)), y0 + int(rng.integers(side // 8, side // 2))
                    shape = "square" if rng.random() < 0.5 else "circle"
                    (draw.rectangle if shape == "square" else draw.ellipse)([x0, y0, x1, y1], fill=colours[colour])
                    words.append(f"a {colour} {shape}")
                caption = " and ".join(words)
                buf = io.BytesIO()
                img.save(buf, format="JPEG", quality=90)
                key = f"{s:04d}{i:06d}"
                sink.write({"__key__": key, "jpg": buf.getvalue(), "txt": caption,
                            "json": json.dumps({"source": "synthetic", "captions": [caption]}).encode()})
        sizes[name] = count
    (train / "sizes.json").write_text(json.dumps(sizes))
    (train / "mix.json").write_text(json.dumps({"weights": {"synthetic": 1.0}, "counts": {"synthetic": images}}))
    return folder


# ============================================================================================== our rows
def _recipe(spec: dict[str, Any], data_root: Path, loader: str, workers: int, total: int, log_every: int,
            device: str, seed: int, compile: bool = False):
    from tinyclip.recipe import parse_recipe

    raw = {"name": f"bench-gpu-step-{loader}", "seed": seed, "device": device,
           "teacher": {"model": spec["teacher"], "weights": None},
           "defaults": {"data": {"profile": None, "root": str(data_root), "augment": True, "loader": loader,
                                 "workers": workers},
                        "precision": spec["precision"], "batch": spec["batch"], "steps": total, "lr": 1e-4,
                        "warmup": 2, "loss": "affinity", "logit_scale": {"mode": "fixed", "value": 50.0},
                        "checkpoint_every": 10 ** 6, "log_every": log_every, "eval": {"tasks": []},
                        **({"compile": True} if compile else {})},
           "stages": [{"name": loader, "student": spec["student"], "init": "random"}]}
    return parse_recipe(raw)


def _trainer_row(spec: dict[str, Any], data_root: Path, loader: str, args: argparse.Namespace, teacher_model,
                 device: str, tmp: Path, compile: bool = False) -> dict[str, Any]:
    """One real train_stage run; pairs/s and data wait from its metrics windows after the first (with
    ``compile``, the first window holds the compile)."""
    import open_clip

    from tinyclip import train
    from tinyclip.recipe import resolve_stage
    from tinyclip.runner import _data_source, load_model
    from tinyclip.runs import Run

    total = spec["log_every"] * spec["windows"]
    recipe = _recipe(spec, data_root, loader, args.workers, total, spec["log_every"], device, args.seed, compile)
    stage = recipe.stages[0]
    cfg = resolve_stage(recipe, 0, teacher={"bench": spec["teacher"], "seed": args.seed}, previous=None,
                        device=device.split(":")[0], world_size=1)
    torch.manual_seed(args.seed)
    student = load_model(spec["student"], None)
    tokenizer = open_clip.get_tokenizer(spec["student"])
    pre = open_clip.get_model_preprocess_cfg(student) or {}
    mean = tuple(pre.get("mean", open_clip.OPENAI_DATASET_MEAN))
    std = tuple(pre.get("std", open_clip.OPENAI_DATASET_STD))
    t0 = time.perf_counter()
    data = _data_source(stage, cfg, tokenizer, mean, std)
    if device.startswith("cuda") and hasattr(data, "to"):
        data.to(device)
    load_s = time.perf_counter() - t0
    previous = os.environ.get("TINYCLIP_RUNS_ROOT")
    os.environ["TINYCLIP_RUNS_ROOT"] = str(tmp / f"runs_{loader}{'_compile' if compile else ''}")
    try:
        run = Run(cfg, labels={"benchmark": "gpu_step", "stage": loader})
        compiled = train.compiles(stage, student, device)
        run.reset()
        run.start(args.seed, device)
        t0 = time.perf_counter()
        train.train_stage(run, stage, seed=args.seed, teacher=train.Teacher(teacher_model), student=student,
                          data=data, evaluate=lambda model, items=None: {}, world=train.World(), device=device)
        wall = time.perf_counter() - t0
        records = [r for r in run.read_metrics() if "samples_per_s" in r]
    finally:
        if previous is None:
            os.environ.pop("TINYCLIP_RUNS_ROOT", None)
        else:
            os.environ["TINYCLIP_RUNS_ROOT"] = previous
    windows = records[1:]
    steps_per = spec["log_every"]
    step_s = [steps_per * spec["batch"] / r["samples_per_s"] / steps_per for r in windows]
    wait_s = [r["data_wait_s"] / steps_per for r in windows]
    compute_s = [s - w for s, w in zip(step_s, wait_s)]
    med_step, med_compute = statistics.median(step_s), statistics.median(compute_s)
    return {"pairs_per_s": round(spec["batch"] / med_step, 1), "median_step_s": round(med_step, 4),
            "median_data_wait_s": round(statistics.median(wait_s), 4), "median_compute_s": round(med_compute, 4),
            "step_over_compute": round(med_step / med_compute, 4) if med_compute > 0 else None,
            "timed_steps": steps_per * len(windows), "loader_workers": args.workers, "data_load_s": round(load_s, 2),
            "wall_s": round(wall, 2), "final_loss": records[-1]["loss"],
            "first_window_step_s": round(spec["batch"] / records[0]["samples_per_s"], 4),
            **({"compiled": compiled} if compile else {})}


def _ceiling_row(spec: dict[str, Any], teacher_model, image_size: int, args: argparse.Namespace,
                 device: str, compile: bool = False, channels_last: bool = False) -> dict[str, Any]:
    """The trainer's step on device-resident random tensors: what the input pipeline can at best reach.
    ``compile``: the student + loss module under torch.compile, as the trainer's ``compile: true``;
    ``channels_last``: teacher, student and images in channels-last memory format (the teacher is put back)."""
    import open_clip

    from tinyclip.losses import DistillationLoss, LossConfig
    from tinyclip.runner import load_model
    from tinyclip.train import StudentWithLoss, _forward_context, param_groups

    torch.manual_seed(args.seed)
    student = load_model(spec["student"], None).to(device).train()
    student.logit_scale.requires_grad_(False)
    if channels_last:
        student.to(memory_format=torch.channels_last)
        teacher_model.to(memory_format=torch.channels_last)
    loss_fn = DistillationLoss(LossConfig.from_mode("affinity"), student_dim=int(student.text_projection.shape[1]),
                               teacher_dim=int(teacher_model.text_projection.shape[1])).to(device)
    model = StudentWithLoss(student, loss_fn)
    if compile:
        model.compile()
    fused = {"fused": True} if device.startswith("cuda") else {}
    opt = torch.optim.AdamW(param_groups(model, 0.2), lr=1e-4, **fused)
    params = [p for p in model.parameters() if p.requires_grad]
    b = spec["batch"]
    images = torch.randn(b, 3, image_size, image_size, device=device)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    text_cfg = open_clip.get_model_config(spec["student"])["text_cfg"]
    tokens = torch.randint(1, text_cfg.get("vocab_size", 49408) - 1, (b, text_cfg.get("context_length", 77)),
                           device=device)
    scale = torch.tensor(50.0, device=device)
    autocast = _forward_context(spec["precision"], device)

    def step() -> None:
        with autocast():
            with torch.no_grad():
                ti = teacher_model.encode_image(images, normalize=True).float()
                tt = teacher_model.encode_text(tokens, normalize=True).float()
            out = model(images, tokens, ti, tt, scale)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        opt.step()

    on_gpu = device.startswith("cuda")
    sync = torch.cuda.synchronize if on_gpu else (lambda: None)
    warmup, n = max(2, spec["log_every"]), spec["log_every"] * (spec["windows"] - 1)
    try:
        sync()
        t0 = time.perf_counter()
        step()
        sync()
        first_s = time.perf_counter() - t0
        for _ in range(warmup - 1):
            step()
        sync()
        warmup_s = time.perf_counter() - t0
        med = _time_steps(step, n, on_gpu)
    finally:
        if channels_last:
            teacher_model.to(memory_format=torch.contiguous_format)
    return {"pairs_per_s": round(b / med, 1), "median_step_s": round(med, 4), "timed_steps": n,
            "first_step_s": round(first_s, 3), "first_steps_s": round(warmup_s, 3), "first_steps": warmup,
            "optimizer": "AdamW fused" if fused else "AdamW (foreach)",
            **({"compile": True} if compile else {}), **({"channels_last": True} if channels_last else {})}


def _time_steps(step, n: int, on_gpu: bool) -> float:
    """Seconds per step over ``n`` steps."""
    if on_gpu:  # one sync around all steps: timing each would serialise the host and the device
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(n):
            step()
        torch.cuda.synchronize()
        med = (time.perf_counter() - t0) / n
    else:
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
        med = statistics.median(times)
    return med


# ============================================================================================== open_clip_train
def _open_clip_row(spec: dict[str, Any], data_root: Path, args: argparse.Namespace, device: str, teacher_model,
                   tmp: Path) -> dict[str, Any]:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_distill_step import _open_clip_steps, _run_open_clip_train, _shard_pattern

    from tinyclip.runner import load_model

    torch.manual_seed(args.seed)
    torch.save(load_model(spec["student"], None).state_dict(), tmp / "student.pt")
    torch.save(teacher_model.state_dict(), tmp / "teacher.pt")
    pattern, samples = _shard_pattern(data_root / "train")
    warmup = max(2, spec["log_every"])
    steps = spec["log_every"] * (spec["windows"] - 1)
    argv = ["--model", spec["student"], "--pretrained", str(tmp / "student.pt"),
            "--distill-model", spec["teacher"], "--distill-pretrained", str(tmp / "teacher.pt"),
            "--dataset-type", "webdataset", "--train-data", pattern,
            "--train-num-samples", str(spec["batch"] * (warmup + steps + 1)),
            "--batch-size", str(spec["batch"]), "--workers", str(args.workers), "--device", device.split(":")[0],
            "--precision", OC_PRECISION[spec["precision"]], "--lr", "1e-4", "--wd", "0.2", "--warmup", "2",
            "--grad-clip-norm", "5.0", "--epochs", "1", "--logs", str(tmp / "oc_logs"), "--name", "bench",
            "--save-frequency", "0", "--zeroshot-frequency", "0", "--val-frequency", "0", "--report-to", "",
            "--log-every-n-steps", str(10 ** 9), "--seed", str(args.seed)]
    marks, seen = _run_open_clip_train(argv, tmp / "oc_logs", verbose=False)
    timed = _open_clip_steps(marks, warmup)
    if not timed:
        raise RuntimeError(f"open_clip_train ran {len(marks)} batches; too few to time")
    med_step = statistics.median(s["step_s"] for s in timed)
    med_data = statistics.median(s["data_s"] for s in timed)
    return {"pairs_per_s": round(spec["batch"] / med_step, 1), "median_step_s": round(med_step, 4),
            "median_data_wait_s": round(med_data, 4), "timed_steps": len(timed), "loader_workers": args.workers,
            "loss": seen.get("loss"), "distill": seen.get("distill"), "samples_available": samples}


# ============================================================================================== main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", choices=sorted(SETS), default="mini")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--workers", type=int, default=None, help="loader workers (default: the set's)")
    parser.add_argument("--images", type=int, default=None, help="synthetic JPEGs to write (default: the set's)")
    parser.add_argument("--rows", default="ceiling,memory,stream,open_clip_train",
                        help=f"comma-separated subset of {', '.join(ROWS)}")
    parser.add_argument("--compile", action="store_true",
                        help="add the torch.compile variant of the ceiling and memory rows asked for")
    parser.add_argument("--channels-last", action="store_true",
                        help="add the channels-last variant of the ceiling row (the resnet set)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="JSON output (default: runs/bench/gpu_step_<set>.json)")
    args = parser.parse_args(argv)

    import open_clip

    import tinyclip  # noqa: F401  (registers the model configs, also for open_clip_train in this process)
    from tinyclip.recipe import resolve_device
    from tinyclip.runner import load_model
    from tinyclip.runs import atomic_write_json, runs_root

    spec = dict(SETS[args.set])
    device = resolve_device(args.device)
    args.workers = spec["workers"] if args.workers is None else args.workers
    spec["images"] = args.images or spec["images"]
    if args.threads:
        torch.set_num_threads(args.threads)
    rows_wanted = [r.strip() for r in args.rows.split(",") if r.strip()]
    if args.compile:
        rows_wanted += [f"{r}_compile" for r in ("ceiling", "memory") if r in rows_wanted]
    if args.channels_last and "ceiling" in rows_wanted:
        rows_wanted.append("ceiling_channels_last")
    unknown = sorted(set(rows_wanted) - set(ROWS))
    if unknown:
        parser.error(f"unknown rows {', '.join(unknown)}; choose from {', '.join(ROWS)}")
    out_path = args.out or runs_root() / "bench" / f"gpu_step_{args.set}.json"
    image_size = int(open_clip.get_model_config(spec["student"])["vision_cfg"]["image_size"])

    result: dict[str, Any] = {"set": args.set, "device": device, "teacher": spec["teacher"],
                              "student": spec["student"], "batch": spec["batch"], "precision": spec["precision"],
                              "image_size": image_size, "loss": "affinity (logit scale fixed at 50)",
                              "torch": torch.__version__, "threads": torch.get_num_threads(),
                              "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None, "rows": {}}
    result["command"] = " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])])
    rows = result["rows"]

    def save() -> None:  # after every row: a run cut short by a time limit keeps the rows it measured
        result["ratios"] = _ratios(rows, device)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out_path, result)

    with tempfile.TemporaryDirectory(prefix="bench_gpu_step_") as tmp_name:
        tmp = Path(tmp_name)
        data_root = None
        if any(r in rows_wanted for r in DATA_ROWS):  # the ceiling rows need no shards
            t0 = time.perf_counter()
            data_root = write_shards(tmp / "data", spec["images"], spec["jpeg"], spec["shards"], args.seed)
            result["data"] = {"images": spec["images"], "jpeg_px": spec["jpeg"], "shards": spec["shards"],
                              "write_s": round(time.perf_counter() - t0, 1)}
        torch.manual_seed(args.seed)
        teacher_model = load_model(spec["teacher"], None).to(device).eval().requires_grad_(False)
        for name in ("ceiling", "ceiling_compile", "ceiling_channels_last"):
            if name in rows_wanted:
                rows[name] = _ceiling_row(spec, teacher_model, image_size, args, device,
                                          compile=name.endswith("_compile"),
                                          channels_last=name.endswith("_channels_last"))
                save()
        for name in ("memory", "memory_compile", "stream"):
            if name in rows_wanted:
                loader = name.split("_")[0]
                rows[f"tinyclip_{name}"] = _trainer_row(spec, data_root, loader, args, teacher_model, device, tmp,
                                                        compile=name.endswith("_compile"))
                save()
        if "open_clip_train" in rows_wanted:
            rows["open_clip_train"] = _open_clip_row(spec, data_root, args, device, teacher_model, tmp)
    save()
    print(json.dumps(result))
    return 0


def _ratios(rows: dict[str, dict[str, Any]], device: str) -> dict[str, Any]:
    """Each row's ratio to the ceiling (written into the row), the targets, and what the options buy."""
    ceiling = rows.get("ceiling", {}).get("pairs_per_s")
    for row in rows.values():
        if ceiling:
            row["ratio_to_ceiling"] = round(row["pairs_per_s"] / ceiling, 3)
    ratios: dict[str, Any] = {}
    for eager, option, key in (("ceiling", "ceiling_compile", "compile"),
                               ("tinyclip_memory", "tinyclip_memory_compile", "memory_compile"),
                               ("ceiling", "ceiling_channels_last", "channels_last")):
        if eager in rows and option in rows and rows[option].get("compiled", True):  # the trainer: CUDA only
            ratios[f"{key}_over_eager"] = round(rows[option]["pairs_per_s"] / rows[eager]["pairs_per_s"], 3)
    if "ceiling" in rows and "ceiling_compile" in rows:
        # the compile is paid in the first steps; it pays back (eager - compiled) seconds a step after that
        eager, comp = rows["ceiling"], rows["ceiling_compile"]
        overhead = (comp["first_steps_s"] - comp["first_steps"] * comp["median_step_s"]) - \
                   (eager["first_steps_s"] - eager["first_steps"] * eager["median_step_s"])
        gain = eager["median_step_s"] - comp["median_step_s"]
        ratios["compile_overhead_s"] = round(overhead, 1)
        ratios["compile_break_even_steps"] = math.ceil(overhead / gain) if gain > 0 else None
    ours = rows.get("tinyclip_memory")
    if ours and "open_clip_train" in rows:
        ratios["tinyclip_memory_over_open_clip_train"] = round(ours["pairs_per_s"] / rows["open_clip_train"]["pairs_per_s"], 3)
    if "tinyclip_stream" in rows and "open_clip_train" in rows:
        ratios["tinyclip_stream_over_open_clip_train"] = round(
            rows["tinyclip_stream"]["pairs_per_s"] / rows["open_clip_train"]["pairs_per_s"], 3)
    if ours:
        if device == "cuda":
            ratios["target_gpu"] = {"ceiling_ratio_min": 0.85, "open_clip_train_ratio_min": 1.0,
                                    "met": bool(ours.get("ratio_to_ceiling", 0) >= 0.85 and
                                                ratios.get("tinyclip_memory_over_open_clip_train", 0) >= 1.0)}
        else:
            ratios["target_cpu"] = {"step_over_compute_max": 1.05,
                                    "met": bool(ours["step_over_compute"] is not None
                                                and ours["step_over_compute"] <= 1.05)}
    return ratios


if __name__ == "__main__":
    raise SystemExit(main())
