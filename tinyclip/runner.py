"""The recipe runner (paper §3.3): a recipe's stages in order, each a :func:`tinyclip.train.train_stage` run.

:func:`run_recipe` resolves a recipe into one run folder per stage, reuses finished runs, trains the teacher a
recipe needs first (``teacher: {train: ...}``) and builds a LiT teacher on first use, then gives each stage its
student (inherited from the teacher, the previous stage, another model or another recipe's final student, or
random), its data source, its teacher (the model, or the teacher-embedding cache) and its evaluator.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import warnings
from typing import Any, Callable, Sequence

import torch
from torch import nn

from .errors import TinyCLIPError, one_line
from .inherit.auto import MaskedCLIP
from .pruned import PrunedCLIP, param_counts, to_pruned
from .recipe import (Recipe, StageSpec, check_inputs, inherited_recipe, lit_cache_dir, prerequisite_recipes,
                     resolve_device, resolve_recipe, teacher_recipe)
from .runs import Run, config_hash, runs_root
from .train import Teacher, World, _quiet, init_world, train_stage

log = logging.getLogger(__name__)


def load_teacher_model(recipe: Recipe, device: str, *, world: World, resume: bool) -> nn.Module | None:
    """The recipe's teacher model, frozen, in eval mode (training a ``train:`` teacher first if needed)."""
    from .export import load_open_clip_dir

    spec = recipe.teacher
    if spec.kind in ("none", "embeddings", "lit"):
        return None
    if spec.kind == "train":
        summaries = run_recipe(teacher_recipe(recipe), resume=resume, world=world)
        model, _ = load_open_clip_dir(summaries[-1]["model_dir"])
    else:
        torch.manual_seed(recipe.seed)  # a teacher with random weights (code-path tests) is the same every time
        model = load_model(spec.model, spec.weights)
    return model.to(device).eval().requires_grad_(False)


def load_model(name: str, weights: str | None) -> nn.Module:
    """An open_clip model by registered name (``weights``: a file, a pretrained tag, or None for random init)
    or from a ``local-dir:`` export."""
    import open_clip

    from .export import load_open_clip_dir

    if name.startswith("local-dir:"):
        return load_open_clip_dir(name)[0]
    try:
        with _quiet_open_clip():
            return open_clip.create_model(name, pretrained=weights)
    except Exception as exc:  # noqa: BLE001 — a download or load failure, one line for the user
        raise TinyCLIPError(f"cannot load {name} weights {weights!r} ({one_line(exc, 160)}); without network give the "
                            "weights as a local checkpoint file") from None


@contextlib.contextmanager
def _quiet_open_clip():
    """open_clip logs "No pretrained weights loaded" for every random init (intended here) and an ERROR line
    before raising on a failed download (our TinyCLIPError carries the message)."""
    previous = logging.root.manager.disable
    logging.disable(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)



def run_recipe(recipe: Recipe, *, resume: bool = False, force: bool = False, stage: str | None = None,
               world: World | None = None, on_step: Callable[[int, dict], None] | None = None) -> list[dict]:
    """Run a recipe's stages in order, reusing finished runs; return each stage's summary (paper §3.3).

    Stage k starts from stage k−1's student (``init: previous``) and every stage is distilled from the recipe's
    teacher, which is trained first when the recipe says ``teacher: {train: ...}``. ``stage`` stops after the
    named stage; ``force`` retrains the recipe's own stages (the one named by ``stage`` only, if given), never
    its teacher. ``resume`` continues an interrupted stage from its last checkpoint.
    """
    import open_clip

    from .export import load_open_clip_dir
    from .inherit.manual import ManualInheritSpec, inherit_manual
    from .pruned import load_pruned

    world = world or init_world(resolve_device(recipe.device))
    check_inputs(recipe)
    build_lit_teachers(recipe, world)
    last = recipe.stage_index(stage) if stage is not None else len(recipe.stages) - 1
    device = resolve_device(recipe.device)
    configs = resolve_recipe(recipe, device=device, world_size=world.world_size)
    runs = [Run(cfg, labels={"recipe": recipe.name, "stage": s.name,
                             "recipe_path": str(recipe.path) if recipe.path else None})
            for cfg, s in zip(configs, recipe.stages)]
    run_device = f"cuda:{world.local_rank}" if device == "cuda" else device

    summaries: list[dict] = []
    sources: dict[str, Any] = {}
    teacher_model: nn.Module | None = None
    teacher_loaded = False
    for index in range(last + 1):
        spec, run = recipe.stages[index], runs[index]
        forced = force and (stage is None or index == last)
        with _locked(run, world):
            if run.is_finished() and not forced:
                summaries.append({**run.summary(), "reused": True})
                continue
            fresh = forced or not run.has_checkpoint()
            if not fresh and not resume:
                raise TinyCLIPError(f"run {run.dir} of stage {spec.name!r} was interrupted; pass --resume to "
                                    "continue it or --force to start it over")
            if not teacher_loaded:  # before the run folder is touched: a teacher that fails to load leaves none
                teacher_model = load_teacher_model(recipe, run_device, world=world, resume=resume)
                teacher_loaded = True
            world.barrier()  # every rank has looked at the checkpoint before rank 0 may remove it
            if world.is_main:
                if fresh:
                    run.reset()
                run.start(recipe.seed, run_device)
            world.barrier()

            # the student (paper §3.2): inherited from the teacher, the previous stage's student, another
            # model (init: {model, weights}) or another recipe's final student (init: {train}), or random
            # each rank its own stream, seed + rank (as the official code): the masks' gate samples differ per
            # rank like its batch rows; DDP copies rank 0's initial weights to every rank when it wraps them
            torch.manual_seed(recipe.seed + world.rank)
            inherit = ManualInheritSpec(**spec.inherit)
            previous_auto = index > 0 and recipe.stages[index - 1].kind == "auto"
            if spec.init == "random":
                source = student = load_model(spec.student, None)
            else:
                source = {"teacher": lambda: teacher_model,
                          "previous": lambda: (load_pruned(runs[index - 1].model_dir) if previous_auto
                                               else load_open_clip_dir(runs[index - 1].model_dir)[0]),
                          "model": lambda: load_model(spec.init_model, spec.init_weights),
                          "run": lambda: load_open_clip_dir(
                              run_recipe(inherited_recipe(spec), resume=resume, world=world)[-1]["model_dir"])[0],
                          }[spec.init]()
                if spec.kind == "manual":
                    student, _ = inherit_manual(source, spec.student, inherit)  # same size: an exact copy
            if spec.kind == "auto":  # the masks start on the source itself (a copy: the teacher stays intact)
                student = auto_student(source, teacher_model)
            preprocess = open_clip.get_model_preprocess_cfg(
                student if spec.kind == "manual" or teacher_model is None else teacher_model) or {}
            tokenizer = open_clip.get_tokenizer(spec.student)
            mean = tuple(preprocess.get("mean", open_clip.OPENAI_DATASET_MEAN))
            std = tuple(preprocess.get("std", open_clip.OPENAI_DATASET_STD))
            key = json.dumps([run.config["data"], run.config["student"]["model_cfg"]["vision_cfg"]["image_size"],
                              mean, std, tokenizer.context_length])
            if key not in sources or spec.data.streamed:  # a chain's stages read the same data: decode it once
                sources[key] = _data_source(spec, run.config, tokenizer, mean, std)
                if run_device.startswith("cuda") and hasattr(sources[key], "to"):  # in-memory: images on the GPU
                    sources[key].to(run_device)
            data = sources[key]
            teacher = _make_teacher(recipe, spec, run, teacher_model, data,
                                    preprocess={"mean": list(mean), "std": list(std),
                                                "tokenizer": type(tokenizer).__name__,
                                                "context_length": tokenizer.context_length})
            summary = train_stage(run, spec, seed=recipe.seed, teacher=teacher, student=student, data=data,
                                  evaluate=_evaluator(spec, tokenizer, run_device), world=world,
                                  device=run_device, resume=resume, on_step=on_step)
            summaries.append({**summary, "reused": False})
    return summaries


def build_lit_teachers(recipe: Recipe, world: World) -> None:
    """Build the LiT teacher (:mod:`tinyclip.lit`) of this recipe, or of the recipes it needs first (the one that
    trains its teacher, those its stages inherit from), when its embedding cache is missing: the run identities
    name the cache, so it must exist before they resolve."""
    for sub in prerequisite_recipes(recipe):
        build_lit_teachers(sub, world)
    if recipe.teacher.kind != "lit":
        return
    path = lit_cache_dir(recipe)
    if world.is_main and not path.is_dir():
        from .lit import build_lit_teacher

        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.parent / ".lock", "w") as handle:  # parallel recipes sharing the teacher wait here
            fcntl.flock(handle, fcntl.LOCK_EX)
            if not path.is_dir():
                log.info("building the LiT teacher of %s (once): %s", recipe.name, path.parent)
                build_lit_teacher(recipe.teacher.lit["profile"], image_size=recipe.teacher.lit["image_size"],
                                  out_dir=path.parent, teacher_cache_views=recipe.stages[0].data.fixed_views,
                                  progress=not _quiet())
    world.barrier()


def auto_student(source: nn.Module, teacher: nn.Module | None) -> PrunedCLIP:
    """The student an auto stage masks: a trainable copy of ``source`` (the teacher, the previous stage's
    pruned student, ...) as a PrunedCLIP whose sparsity reference is the *original* teacher's size (paper §3.3:
    stage k is measured against the teacher, not against stage k−1)."""
    import copy

    student = to_pruned(copy.deepcopy(source)).requires_grad_(True)
    if teacher is not None:
        student.config.reference_params = param_counts(teacher)["total"]
    return student


@contextlib.contextmanager
def _locked(run: Run, world: World):
    """Rank 0 holds the run's lock (parallel arms that share a run wait for each other)."""
    if world.is_main:
        with run.lock():
            yield
    else:
        yield


def _data_source(stage: StageSpec, config: dict, tokenizer: Any, mean: Sequence[float], std: Sequence[float]) -> Any:
    """The stage's training batches: :class:`tinyclip.data.PairSource` (in memory, every batch a pure function of
    (seed, step)) or, for the paper profile's webdataset shards, a :class:`StreamSource`."""
    from .data import PairSource, StreamSource, TrainDataSpec

    data = stage.data
    image_size = int(config["student"]["model_cfg"]["vision_cfg"]["image_size"])
    if data.streamed:
        return StreamSource(data.resolved_root(), image_size, data.augment, tokenizer, mean, std, data.workers)
    return PairSource(TrainDataSpec(root=str(data.resolved_root()), weights=data.weights, image_size=image_size,
                                    augment=data.augment, fixed_views=data.fixed_views), tokenizer, mean, std)



def _make_teacher(recipe: Recipe, stage: StageSpec, run: Run, model: nn.Module | None, data: Any,
                  preprocess: dict[str, Any] | None = None) -> Teacher | None:
    """The stage's teacher: the model, the model behind a per-(sample, view) embedding cache shared by every run
    with the same teacher, data and numerics (``runs/teacher_cache/<hash>``), or a stored embedding set only."""
    from .teacher_cache import TeacherEmbeddingCache

    if recipe.teacher.kind == "none":
        return None
    if recipe.teacher.kind in ("embeddings", "lit"):
        path = recipe.teacher.embeddings if recipe.teacher.kind == "embeddings" else lit_cache_dir(recipe)
        return Teacher(None, TeacherEmbeddingCache.open(path, writable=False))
    if not stage.teacher_cache:
        return Teacher(model)
    # every input that changes an embedding: the teacher (its run, its weights' digest, or its seed when its
    # weights are random), the data and views, the image size and normalisation, the tokenizer, the numerics
    identity = {"teacher": run.config["teacher"], "data": run.config["data"],
                "image_size": run.config["student"]["model_cfg"]["vision_cfg"]["image_size"],
                "preprocess": preprocess, "precision": run.config["precision"], "device": run.config["device"]}
    path = runs_root() / "teacher_cache" / config_hash(identity)
    cache = TeacherEmbeddingCache.open_or_create(
        path, ids=data.sample_ids(), dim=int(model.text_projection.shape[1]),
        logit_scale=float(model.logit_scale.exp()), identity=identity)
    return Teacher(model, cache)


def _evaluator(stage: StageSpec, tokenizer: Any, device: str) -> Callable[[nn.Module], dict]:
    """Zero-shot classification and retrieval on the profile's evaluation sets (and ImageNet if given)."""
    from .eval import eval_transform, evaluate_model

    spec = stage.eval

    def evaluate(student: nn.Module, items: dict | None = None) -> dict:
        import open_clip

        if not spec["tasks"] and not spec["imagenet"]:
            return {}
        model = student.model if isinstance(student, MaskedCLIP) else student  # the tower under the masks
        cfg = open_clip.get_model_preprocess_cfg(model) or {}
        size = model.visual.image_size
        preprocess = eval_transform(int(size if isinstance(size, int) else size[0]),
                                    cfg.get("mean", open_clip.OPENAI_DATASET_MEAN),
                                    cfg.get("std", open_clip.OPENAI_DATASET_STD))
        with torch.no_grad():
            return evaluate_model(student, preprocess, tokenizer, stage.data.resolved_root() / "eval",
                                  tasks=spec["tasks"], batch_size=spec["batch_size"], device=device,
                                  imagenet_root=spec["imagenet"], max_items=spec["max_items"], items=items)
    return evaluate
