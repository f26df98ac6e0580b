"""Inference throughput of teachers and students, as ratios to the teacher next to the MACs ratio (issue 4 §4).

    python benchmarks/bench_inference.py --set table2 --out benchmarks/results/inference_table2_cpu.json
    python benchmarks/bench_inference.py --set mini --device cuda --amp     # where a GPU is at hand
    python benchmarks/bench_inference.py --set mini --pruned A50=runs/<hash>/model   # + a trained auto student

Random weights (throughput does not depend on their values). Models are timed side by side in one process,
interleaved round by round; report the ratios, not the absolute numbers, on a noisy machine.
"""
from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import open_clip
import torch

import tinyclip  # noqa: F401  (registers the configs)
from tinyclip import zoo
from tinyclip.pruned import PrunedCLIP, load_pruned
from tinyclip.throughput import throughput_table

SETS = {
    # (teacher, models); each ratio is taken against the teacher of its family
    "table2": {"ViT-B-32": ["ViT-B-32", "TinyCLIP-ViT-61M-32-Text-29M", "TinyCLIP-ViT-40M-32-Text-19M"],
               "RN50": ["RN50", "TinyCLIP-ResNet-30M-Text-29M", "TinyCLIP-ResNet-19M-Text-19M"],
               "ViT-B-16": ["ViT-B-16", "TinyCLIP-ViT-39M-16-Text-19M", "TinyCLIP-ViT-8M-16-Text-3M"]},
    "mini": {"TinyCLIP-mini-teacher": zoo.MINI_MODELS},
    "smoke": {"TinyCLIP-smoke-teacher": zoo.SMOKE_MODELS},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", choices=sorted(SETS), default="mini")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", action="store_true", help="autocast (fp16 on CUDA, bf16 on CPU)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--pruned", nargs="*", default=[], metavar="LABEL=DIR",
                        help="also time trained pruned students (tinyclip.pruned folders, e.g. a mini auto run's "
                             "model/), against the set's first teacher")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    rows = []
    for teacher, names in SETS[args.set].items():
        models = {name: open_clip.create_model(name) for name in names}
        if teacher == next(iter(SETS[args.set])):
            for item in args.pruned:
                label, _, folder = item.partition("=")
                models[label] = load_pruned(folder)
        names = list(models)
        speed = throughput_table(models, batch_size=args.batch_size, rounds=args.rounds, device=args.device,
                                 amp=args.amp)
        macs = {name: zoo.count_macs(models[name] if isinstance(models[name], PrunedCLIP)
                                     else zoo.build_shape_model(name))["total"] for name in names}
        for name in names:
            rows.append({"model": name, "teacher": teacher, **speed[name], "macs_g": macs[name] / 1e9,
                         "speedup_vs_teacher": speed[name]["pairs_per_s"] / speed[teacher]["pairs_per_s"],
                         "macs_ratio_teacher_over_model": macs[teacher] / macs[name]})
        del models
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    result = {"benchmark": "inference_throughput", "set": args.set, "batch_size": args.batch_size,
              "rounds": args.rounds, "device": args.device, "device_name": device_name, "amp": args.amp,
              "threads": torch.get_num_threads(), "torch": torch.__version__, "host": platform.node(), "rows": rows}
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
