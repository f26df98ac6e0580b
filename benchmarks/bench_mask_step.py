"""Cost of a mask-phase training step vs a plain distillation step of the unmasked student (issue 5, section 4).

Both steps use the same student architecture, teacher and batch, and are timed side by side in one process
(interleaved rounds, median over steps):

* ``plain``: teacher forward (no grad) + open_clip student forward + affinity-mimicking loss
  (:mod:`tinyclip.losses`) + backward + grad clip + AdamW step -- a plain distillation step of the
  unmasked model;
* ``plain_pruned``: the same with the student converted to :class:`tinyclip.pruned.PrunedCLIP` (nothing
  pruned), to separate the cost of our dense module from the cost of the masks;
* ``mask``: the same student under :class:`tinyclip.inherit.auto.MaskedCLIP` in train mode (sampled
  gates, gated LayerNorms), plus the sparsity Lagrangian and the mask / multiplier optimiser step.

Target: ``ratio = mask / plain <= 1.3`` (median wall time; on a shared CPU also read the CPU-time ratio,
which other processes disturb much less). Writes a JSON summary (``--out``) and prints it.

    .venv/bin/python benchmarks/bench_mask_step.py --model TinyCLIP-mini-teacher --batch 64 --out bench.json
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def make_batch(model, batch: int, device, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    size = model.visual.image_size
    images = torch.randn(batch, 3, *size, generator=gen)
    context = model.context_length
    tokens = torch.randint(1, 49406, (batch, context), generator=gen)
    lengths = torch.randint(2, context, (batch,), generator=gen)
    tokens[torch.arange(batch), lengths] = 49407  # EOT: the highest id, where the text tower pools
    return images.to(device), tokens.to(device)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="TinyCLIP-mini-teacher")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per variant and round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (plain, pruned, mask)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant first")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="bf16 = autocast")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the student forwards")
    parser.add_argument("--out", type=Path, default=None, help="JSON output path")
    args = parser.parse_args(argv)

    import open_clip

    import tinyclip  # noqa: F401  (registers the model configs)
    from tinyclip.inherit.auto import AutoInheritSpec, MaskedCLIP, MaskOptimizer
    from tinyclip.losses import DistillationLoss, LossConfig
    from tinyclip.pruned import to_pruned

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    teacher = open_clip.create_model(args.model).to(device).eval().requires_grad_(False)
    student = open_clip.create_model(args.model).to(device)
    pruned_student = to_pruned(copy.deepcopy(student))
    spec = AutoInheritSpec(target_sparsity=0.25, sparsity_warmup=100)
    masked = MaskedCLIP(to_pruned(copy.deepcopy(student)), spec).to(device).train()
    images, tokens = make_batch(student, args.batch, device)
    embed_dim = student.visual.output_dim
    # affinity mimicking with the official fixed logit scale 50 (tinyclip.losses)
    distill = DistillationLoss(LossConfig(affinity=1.0, fixed_logit_scale=50.0), embed_dim, embed_dim).to(device)
    # the trainer's forward context: autocast, and on CPU the math attention kernel (tinyclip.train)
    from tinyclip.train import _forward_context

    autocast = _forward_context(args.precision, device.type)

    def make_step(model, weights, extra):
        opt = torch.optim.AdamW(weights, lr=1e-4, weight_decay=0.2)
        mask_opt = MaskOptimizer(model) if extra else None
        forward = torch.compile(model) if args.compile else model
        counter = {"step": 0}

        def step():
            opt.zero_grad(set_to_none=True)
            if mask_opt:
                mask_opt.zero_grad()
            with autocast():
                with torch.no_grad():
                    img_t = F.normalize(teacher.encode_image(images), dim=-1)
                    txt_t = F.normalize(teacher.encode_text(tokens), dim=-1)
                img_s, txt_s, scale_s = forward(images, tokens)
                loss = distill(img_s, txt_s, img_t, txt_t, scale_s, teacher.logit_scale.exp())["loss"]
                if mask_opt:
                    loss = loss + model.sparsity_loss(counter["step"])[0]
            loss.backward()
            torch.nn.utils.clip_grad_norm_(weights, 5.0)  # weights only: L0 params are not clipped
            opt.step()
            if mask_opt:
                mask_opt.step()
            counter["step"] += 1

        return step

    variants = {
        "plain": make_step(student.train(), list(student.parameters()), False),
        "plain_pruned": make_step(pruned_student.train(), list(pruned_student.parameters()), False),
        "mask": make_step(masked, masked.weight_parameters(), True),
    }

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for step in variants.values():
        for _ in range(args.warmup):
            step()
    # wall time, and the process's CPU time: on a shared CPU the latter is far less disturbed by other jobs
    times: dict[str, list[float]] = {name: [] for name in variants}
    cpu_times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, step in variants.items():
            for _ in range(args.steps):
                sync()
                start, cpu_start = time.perf_counter(), time.process_time()
                step()
                sync()
                times[name].append(time.perf_counter() - start)
                cpu_times[name].append(time.process_time() - cpu_start)

    median = {name: statistics.median(ts) for name, ts in times.items()}
    cpu_median = {name: statistics.median(ts) for name, ts in cpu_times.items()}
    result = {
        "benchmark": "mask_step_vs_plain_distillation_step",
        "model": args.model,
        "batch": args.batch,
        "image_size": list(student.visual.image_size),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "device_type": device.type,
        "threads": torch.get_num_threads(),
        "precision": args.precision,
        "compile": args.compile,
        "torch": torch.__version__,
        "steps_per_variant": args.steps * args.rounds,
        "median_step_s": median,
        "min_step_s": {name: min(ts) for name, ts in times.items()},
        "median_cpu_time_s": cpu_median,
        "ratio_mask_vs_plain": median["mask"] / median["plain"],
        "ratio_mask_vs_plain_pruned": median["mask"] / median["plain_pruned"],
        "ratio_plain_pruned_vs_plain": median["plain_pruned"] / median["plain"],
        "cpu_time_ratio_mask_vs_plain": cpu_median["mask"] / cpu_median["plain"],
        "cpu_time_ratio_mask_vs_plain_pruned": cpu_median["mask"] / cpu_median["plain_pruned"],
        "target_ratio": 1.3,
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(args.out.suffix + ".tmp")
        tmp.write_text(text + "\n")
        tmp.replace(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
