"""The ``tinyclip train-teacher / distill / smoke`` commands (recipes through :mod:`tinyclip.runner`, several
recipes or seeds through :mod:`tinyclip.jobs`)."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from .errors import TinyCLIPError
from .jobs import run_many
from .recipe import Recipe, load_recipe, resolve_device, teacher_recipe
from .runner import _evaluator, run_recipe
from .train import init_world


def _apply_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)


def _run_cli(args: argparse.Namespace, teacher_only: bool) -> int:
    recipes, seeds = args.recipe, args.seed or [None]
    if len(recipes) * len(seeds) > 1 or args.parallel > 1:
        if args.stage:
            raise TinyCLIPError("--stage applies to a single recipe; run several recipes without it")
        results = run_many(recipes, seeds, parallel=args.parallel, threads=args.threads or 1,
                           resume=args.resume, force=args.force)
        print(json.dumps(results))
        return 0 if all(r["returncode"] == 0 for r in results) else 2
    _apply_threads(args.threads)
    recipe = load_recipe(recipes[0], seed=seeds[0])
    if teacher_only and recipe.teacher.kind not in ("none", "embeddings", "lit"):
        raise TinyCLIPError(f"recipe {recipe.name!r} distils from a teacher model; run it with `tinyclip distill`")
    world = init_world(resolve_device(recipe.device))
    summaries = run_recipe(recipe, resume=args.resume, force=args.force, stage=args.stage, world=world)
    if world.is_main:
        print(json.dumps(summaries))
    return 0


def cli_train_teacher(args: argparse.Namespace) -> int:
    return _run_cli(args, teacher_only=True)


def cli_distill(args: argparse.Namespace) -> int:
    return _run_cli(args, teacher_only=False)


def cli_smoke(args: argparse.Namespace) -> int:
    _apply_threads(args.threads)
    print(json.dumps(smoke(auto=args.auto)))
    return 0


def smoke(recipe_path: str | Path | None = None, *, auto: bool = False) -> dict:
    """The smoke profile end to end (``make smoke``): data, teacher, the 2-stage manual chain, evaluation.
    ``auto`` (``make smoke-auto``): the 2-stage automatic chain (recipes/smoke_auto.yaml) instead, whose final
    pruned student is then reloaded from its export and evaluated again; the result carries that stage's
    ``target_sparsity``, ``achieved_sparsity`` and ``pruned_vs_masked_max_abs_diff`` at the top level.
    Finished runs are reused and an interrupted one resumes, so a second call takes seconds."""
    from .data import build
    from .runs import project_root

    t0 = time.time()
    build("smoke")
    default = "smoke_auto.yaml" if auto else "smoke_manual.yaml"
    recipe = load_recipe(recipe_path or project_root() / "recipes" / default)
    summaries = run_recipe(recipe, resume=True)
    teacher = run_recipe(teacher_recipe(recipe), resume=True)[-1]  # finished above: reused

    def row(s: dict) -> dict:
        return {"name": s["student"], "stage": s["stage"], "params": s["params"], "metrics": s["metrics"],
                "run": s["run"], "reused": s.get("reused", False), **({"auto": s["auto"]} if "auto" in s else {})}

    result = {"teacher": row(teacher), "students": [row(s) for s in summaries]}
    if auto:
        result.update(_reload_pruned(recipe, summaries[-1]))
    return {**result, "wall_s": round(time.time() - t0, 1)}


def _reload_pruned(recipe: Recipe, summary: dict) -> dict:
    """Reload an auto stage's exported student (tinyclip.pruned.load_pruned) and evaluate it again: the
    metrics must equal those the trainer measured on the in-memory student."""
    import open_clip

    from .pruned import load_pruned

    stage = recipe.stages[-1]
    device = resolve_device(recipe.device)
    student = load_pruned(summary["model_dir"], device=device)
    metrics = _evaluator(stage, open_clip.get_tokenizer(stage.student), device)(student)
    report = summary["auto"]
    return {"stage": stage.name, "reloaded_metrics_equal": metrics == summary["metrics"],
            "target_sparsity": report["target_sparsity"], "achieved_sparsity": report["achieved_sparsity"],
            "pruned_vs_masked_max_abs_diff": report["pruned_vs_masked_max_abs_diff"]}
