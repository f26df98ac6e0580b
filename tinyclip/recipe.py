"""Training recipes (YAML) for the teacher and the multi-stage distillation chain of paper §3.3.

A recipe names a teacher and a list of stages. Each stage distils one student; stage k starts from stage k−1's
student (``init: previous``) while the teacher stays the original one. Example (recipes/smoke_manual.yaml)::

    name: smoke-manual
    seed: 0
    teacher: {train: smoke_teacher.yaml}    # or {model: ViT-B-32, weights: FILE|TAG|null}, {embeddings: DIR}, none
    defaults:                               # shared by every stage; a stage overrides any key
      data: {profile: smoke, augment: false}
      batch: 32
      lr: 1.0e-3
      warmup: 4
      loss: affinity                        # a LossConfig mode, or {mode: affinity, contrastive: 0.5, ...}
    stages:
      - {name: S75, student: TinyCLIP-smoke-S75, init: teacher, steps: 40}
      - {name: S50, student: TinyCLIP-smoke-S50, init: previous, steps: 40}

A stage's ``init`` is ``teacher`` (manual inheritance from the teacher, paper §3.2), ``previous`` (from the
previous stage's student), ``random``, ``{model: NAME, weights: FILE|TAG}`` (inherit from another model, e.g.
OpenAI RN50 for the official ResNet students), or ``{train: RECIPE}`` (inherit from that recipe's final student,
trained first or reused, and named in the run identity by its run hash: e.g. the mini teacher's weights while
the stage distils from another teacher, recipes/mini_s50_lit.yaml). Its budget is ``steps``, ``samples`` or ``epochs`` (one epoch = as
many samples as the training shards hold). :data:`STAGE_DEFAULTS` lists every key.

``kind: auto`` with an ``auto:`` mapping (:class:`tinyclip.inherit.auto.AutoInheritSpec`) is automatic
inheritance (paper §3.2): the stage learns masks on its source (``init``) for ``auto.mask_steps`` steps, prunes
it to a smaller dense student and distils that for the rest of its steps. Its ``student`` names the open_clip
config the chain descends from (the teacher's: tokenizer, image size); ``init: previous`` continues from the
previous auto stage's pruned student, and the sparsity is always measured against the original teacher. The
official schedule warms the weight lr up over the whole mask phase (``warmup`` = ``mask_steps``), e.g.
recipes/smoke_auto.yaml.

Built-in defaults (:data:`STAGE_DEFAULTS`) are the official code's (docs/official_code.md §4–5): lr 1e-4 with
linear warm-up + cosine, AdamW weight decay 0.2 on ≥2-D non-norm/bias/logit-scale tensors, betas/eps chosen by
the vision tower type ("auto"), gradient-norm clip 5, AMP on GPU / fp32 on CPU, and the logit scale fixed at 50.

This module parses and validates (every bad input becomes a one-line :class:`TinyCLIPError` before any work) and
*resolves* a stage into the plain dict that identifies its run (:func:`resolve_stage`; hashed by
:func:`tinyclip.runs.config_hash`). Names, paths of logs and checkpoint cadence are labels, not identity: two
recipes asking for the same stage share one run. Relative paths in a recipe are relative to the recipe's folder.
"""
from __future__ import annotations

import copy
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from . import recipe_schema as schema
from .errors import TinyCLIPError, one_line
from .recipe_schema import fail as _fail
from .recipe_schema import number as _number
from .runs import config_hash, file_digest

RUN_FORMAT = 1  # bump when the meaning of a resolved config changes, so old runs are not reused by mistake

STAGE_DEFAULTS: dict[str, Any] = {
    "kind": "manual",            # "manual" (a fixed student config) | "auto" (learned masks; tinyclip.inherit.auto)
    "init": None,                # "teacher" | "previous" | "random"; None = teacher if there is one, else random
    "inherit": {"depth_rule": "even", "width_rule": "leading"},   # tinyclip.inherit.manual.ManualInheritSpec
    "loss": "affinity",
    # data: profile (data/<profile>/) or root; source weights; augmentation; fixed views per sample (teacher cache);
    # loader "memory" (PairSource: exact resume) or "stream" (webdataset shards; "auto": stream for paper)
    "data": {"profile": "mini", "root": None, "weights": None, "augment": True, "fixed_views": 0,
             "loader": "auto", "workers": 4},
    "steps": None, "samples": None, "epochs": None,   # exactly one
    "batch": None,               # global batch (split over ranks under torchrun)
    "lr": 1.0e-4,
    "warmup": 2000,              # int = steps; a float in (0, 1) = fraction of the stage's steps
    "weight_decay": 0.2,
    "betas": "auto",             # "auto": (0.9, 0.98) for ViT vision towers, else (0.9, 0.999) (official rule)
    "eps": "auto",               # "auto": 1e-6 for ViT, else 1e-8
    "grad_clip": 5.0,            # max global gradient norm; 0 = off
    "precision": "auto",         # "auto" (fp32 on CPU, amp on GPU) | "fp32" | "amp" (fp16 + GradScaler) | "bf16"
    "logit_scale": {"mode": "fixed", "value": 50.0},   # or {mode: learned, max: 100.0}
    # eval: tasks = the profile's evaluation sets (tinyclip.eval; None = all that the data build wrote), every N
    # steps besides the end (0 = end only), imagenet = an ImageNet folder for zero-shot (paper), max_items per set
    "eval": {"tasks": None, "every": 0, "batch_size": 256, "imagenet": None, "max_items": None},
    "teacher_cache": False,      # store teacher embeddings per (sample, view); needs data.fixed_views > 0
    "checkpoint_every": 100,     # steps; not part of the run identity
    "log_every": 10,             # steps; not part of the run identity
    "auto": None,                # kind "auto": tinyclip.inherit.auto.AutoInheritSpec fields (target_sparsity, ...)
    # torch.compile the student + loss module on CUDA (ignored on CPU). Part of the run identity only when true
    # (compiled kernels round differently), so every run resolved before the key existed keeps its hash
    "compile": False,
}
_UNHASHED = ("checkpoint_every", "log_every")
_INIT_CHOICES = ("teacher", "previous", "random")
_PRECISIONS = ("auto", "fp32", "amp", "bf16")
_DEVICES = ("auto", "cpu", "cuda")
_RECIPE_KEYS = {"name", "seed", "device", "teacher", "defaults", "stages", "description"}


# ----------------------------------------------------------------------------------------------- dataclasses
@dataclass(frozen=True)
class TeacherSpec:
    """Where the teacher comes from. ``kind``: "none" (contrastive teacher training), "model" (an open_clip model
    name or ``local-dir:PATH`` with ``weights`` = a file, a hub tag, or None for random weights), "train" (the
    final student of another recipe, trained first or reused), "embeddings" (only a teacher-embedding cache),
    "lit" (the LiT teacher of a built data set, :mod:`tinyclip.lit`: built on first use, then an embeddings cache
    with the stages' ``data.fixed_views``)."""
    kind: str = "none"
    model: str | None = None
    weights: str | None = None
    recipe: str | None = None
    embeddings: str | None = None
    lit: dict[str, Any] | None = None   # kind "lit": {profile, image_size} of tinyclip.lit.build_lit_teacher


@dataclass(frozen=True)
class DataSpec:
    profile: str | None = "mini"
    root: str | None = None
    weights: dict[str, float] | None = None
    augment: bool = True
    fixed_views: int = 0
    loader: str = "auto"
    workers: int = 4

    @property
    def streamed(self) -> bool:
        return self.loader == "stream" or (self.loader == "auto" and self.profile == "paper")

    def resolved_root(self) -> Path:
        from .data.profiles import profile_dir

        return Path(self.root) if self.root else profile_dir(str(self.profile))


@dataclass(frozen=True)
class StageSpec:
    name: str
    student: str
    kind: str
    init: str                     # "teacher" | "previous" | "random" | "model" (init_model + init_weights)
    #                               | "run" (init_recipe's final student)
    init_model: str | None
    init_weights: str | None
    inherit: dict[str, str]
    loss: dict[str, Any]          # a resolved LossConfig, as a dict
    data: DataSpec
    steps: int
    batch: int
    lr: float
    warmup_steps: int
    weight_decay: float
    betas: tuple[float, float] | str
    eps: float | str
    grad_clip: float
    precision: str
    logit_scale: dict[str, Any]
    eval: dict[str, Any]
    teacher_cache: bool
    checkpoint_every: int
    log_every: int
    auto: dict[str, Any] | None = None   # kind "auto": a resolved tinyclip.inherit.auto.AutoInheritSpec
    compile: bool = False                # torch.compile the student + loss on CUDA (tinyclip.train)
    init_recipe: str | None = None       # init "run": the recipe whose final student this stage inherits from


@dataclass(frozen=True)
class Recipe:
    name: str
    path: Path | None
    seed: int
    device: str
    teacher: TeacherSpec
    stages: tuple[StageSpec, ...]

    def stage_index(self, name: str) -> int:
        for i, stage in enumerate(self.stages):
            if stage.name == name:
                return i
        raise TinyCLIPError(f"recipe {self.name!r} has no stage {name!r}; its stages are "
                            f"{[s.name for s in self.stages]}")


# ----------------------------------------------------------------------------------------------- parsing
def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; ``override`` wins. Non-dict values (and a dict replacing a string) replace."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _resolve_path(value: str, base_dir: Path | None) -> str:
    path = Path(value).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    return str(path)


def _parse_teacher(raw: Any, base_dir: Path | None) -> TeacherSpec:
    if raw is None or raw == "none":
        return TeacherSpec()
    if isinstance(raw, str):  # a bare model name: random weights are a test-only case, so demand them explicitly
        raise _fail("teacher", f"give a mapping, e.g. {{model: {raw}, weights: FILE}} or {{train: RECIPE}}")
    if not isinstance(raw, dict):
        raise _fail("teacher", f"expected a mapping or 'none', got {raw!r}")
    unknown = set(raw) - {"model", "weights", "train", "embeddings", "lit"}
    if unknown:
        raise _fail("teacher", f"unknown keys {sorted(unknown)}; use model/weights, train, embeddings or lit")
    chosen = [k for k in ("model", "train", "embeddings", "lit") if raw.get(k)]
    if len(chosen) != 1:
        raise _fail("teacher", "give exactly one of model (+ weights), train (a teacher recipe), embeddings or lit")
    if "lit" in chosen:
        return TeacherSpec(kind="lit", lit=_parse_lit(raw["lit"]))
    if "train" in chosen:
        return TeacherSpec(kind="train", recipe=_resolve_path(raw["train"], base_dir))
    if "embeddings" in chosen:
        return TeacherSpec(kind="embeddings", embeddings=_resolve_path(raw["embeddings"], base_dir))
    model, weights = _parse_model_weights(raw, "teacher", base_dir)
    return TeacherSpec(kind="model", model=model, weights=weights)


def _parse_lit(raw: Any) -> dict[str, Any]:
    """``lit: PROFILE`` or ``lit: {profile: PROFILE, image_size: N}`` (default 128 px, the measured LiT build)."""
    raw = {"profile": raw} if isinstance(raw, str) else raw
    if not isinstance(raw, dict) or set(raw) - {"profile", "image_size"}:
        raise _fail("teacher.lit", f"expected a profile name or {{profile, image_size}}, got {raw!r}")
    from .data.profiles import PROFILES

    profile = str(raw.get("profile", "mini"))
    if profile not in PROFILES or profile == "paper":
        raise _fail("teacher.lit", f"the LiT teacher is built on the smoke or mini data set, not {profile!r}")
    return {"profile": profile, "image_size": _number(raw.get("image_size", 128), "teacher.lit.image_size", int)}


def lit_cache_dir(recipe: "Recipe") -> Path:
    """Where a ``teacher: {lit: ...}`` recipe's teacher-embedding cache lives (for its stages' fixed views)."""
    from .lit import default_out_dir

    spec = recipe.teacher.lit or {}
    return default_out_dir(spec["profile"], spec["image_size"]) / f"teacher_cache_v{recipe.stages[0].data.fixed_views}"


def is_weights_file(weights: str) -> bool:
    """A weights value names a file (not a pretrained tag such as ``laion2b_e16``)."""
    return "/" in weights or weights.endswith((".pt", ".pth", ".bin", ".safetensors"))


def _parse_model_weights(raw: dict[str, Any], where: str, base_dir: Path | None) -> tuple[str, str | None]:
    """``{model: NAME | local-dir:PATH, weights: FILE | TAG | null}`` with paths anchored at the recipe."""
    model = str(raw["model"])
    if model.startswith("local-dir:"):
        model = "local-dir:" + _resolve_path(model[len("local-dir:"):], base_dir)
    if "weights" not in raw and not model.startswith("local-dir:"):
        raise _fail(where, "say which weights: a file, a pretrained tag, or null for random weights")
    weights = raw.get("weights")
    if weights is not None:
        weights = str(weights)
        weights = _resolve_path(weights, base_dir) if is_weights_file(weights) else weights
    return model, weights


def _parse_loss(raw: Any, where: str) -> dict[str, Any]:
    from .losses import LossConfig

    if isinstance(raw, str):
        raw = {"mode": raw}
    if not isinstance(raw, dict):
        raise _fail(where, f"expected a mode name or a mapping, got {raw!r}")
    raw = dict(raw)
    mode = raw.pop("mode", None)
    if raw.get("fixed_logit_scale") is not None:
        raise _fail(where, "set the stage's logit_scale: {mode: fixed, value: X} instead of the loss's "
                           "fixed_logit_scale (one knob for the loss and the student's parameter)")
    try:
        base = asdict(LossConfig.from_mode(mode)) if mode is not None else {}
        return asdict(LossConfig.from_dict({**base, **raw}))
    except TinyCLIPError as exc:
        raise _fail(where, str(exc)) from None
    except (TypeError, ValueError, KeyError) as exc:
        raise _fail(where, f"bad loss settings ({exc})") from None


def _parse_stage(raw: dict[str, Any], index: int, defaults: dict[str, Any], has_teacher: bool,
                 base_dir: Path | None) -> StageSpec:
    if not isinstance(raw, dict):
        raise _fail(f"stages[{index}]", f"expected a mapping, got {raw!r}")
    name = str(raw.get("name", f"stage{index + 1}"))
    where = f"stage {name!r}"
    merged = _merge(_merge(STAGE_DEFAULTS, defaults), {k: v for k, v in raw.items() if k != "name"})
    unknown = set(merged) - set(STAGE_DEFAULTS) - {"student"}
    if unknown:
        raise _fail(where, f"unknown keys {sorted(unknown)}; known: {sorted(STAGE_DEFAULTS) + ['student']}")
    student = merged.get("student")
    if not isinstance(student, str) or not student:
        raise _fail(where, "student: give a model config name, e.g. TinyCLIP-smoke-S75")

    kind = merged["kind"]
    if kind not in ("manual", "auto"):
        raise _fail(where, f"kind must be 'manual' or 'auto', got {kind!r}")
    init = merged["init"] or ("teacher" if has_teacher else "random")
    init_model = init_weights = source_recipe = None
    if isinstance(init, dict) and set(init) == {"train"}:
        # inherit from the final student of another recipe, trained first or reused (e.g. a teacher recipe's
        # trained model while this recipe distils from another teacher)
        if not isinstance(init["train"], str) or not init["train"]:
            raise _fail(where, f"init: {{train: RECIPE}} needs a recipe file, got {init['train']!r}")
        source_recipe = _resolve_path(init["train"], base_dir)
        init = "run"
    elif isinstance(init, dict):  # inherit from another model than the teacher (e.g. the official ResNet chain)
        if set(init) - {"model", "weights"} or "model" not in init:
            raise _fail(where, f"init: a mapping must be {{model: NAME, weights: FILE|TAG}} or {{train: RECIPE}}, "
                               f"got {init!r}")
        init_model, init_weights = _parse_model_weights(init, f"{where}: init", base_dir)
        init = "model"
    elif init not in _INIT_CHOICES:
        raise _fail(where, f"init must be one of {_INIT_CHOICES}, {{model: NAME, weights: FILE|TAG}} or "
                           f"{{train: RECIPE}}, got {init!r}")
    if init == "previous" and index == 0:
        raise _fail(where, "init: previous needs a previous stage; the first stage inherits from the teacher")

    data_raw = schema.check_data(merged["data"], where)
    if data_raw.get("root"):
        data_raw = {**data_raw, "root": _resolve_path(data_raw["root"], base_dir), "profile": None}
    data = DataSpec(**data_raw)

    budgets = {k: merged[k] for k in ("steps", "samples", "epochs") if merged[k] is not None}
    if len(budgets) != 1:
        raise _fail(where, "give exactly one of steps, samples or epochs")
    batch = _number(merged["batch"], f"{where}: batch", int) if merged["batch"] is not None else None
    if batch is None or batch < 1:
        raise _fail(where, "batch must be a positive integer (the global batch size)")
    (budget_key, budget), = budgets.items()
    if budget_key == "steps":
        steps = _number(budget, f"{where}: steps", int)
    elif budget_key == "samples":
        steps = math.ceil(_number(budget, f"{where}: samples", int) / batch)
    else:  # one epoch = as many samples as the training shards hold
        steps = math.ceil(_number(budget, f"{where}: epochs") * _epoch_size(data, where) / batch)
    if steps < 1:
        raise _fail(where, f"the stage must train at least one step (got {budget_key}={budget})")

    warmup = merged["warmup"]
    if isinstance(warmup, float) and 0 < warmup < 1:
        warmup_steps = int(round(warmup * steps))
    else:
        warmup_steps = _number(warmup, f"{where}: warmup", int)
        if warmup_steps < 0:
            raise _fail(where, "warmup must be ≥ 0 steps (or a fraction in (0, 1))")
    lr = _number(merged["lr"], f"{where}: lr")
    if lr <= 0:
        raise _fail(where, f"lr must be positive, got {lr}")
    weight_decay = _number(merged["weight_decay"], f"{where}: weight_decay")
    grad_clip = _number(merged["grad_clip"], f"{where}: grad_clip")
    if weight_decay < 0 or grad_clip < 0:
        raise _fail(where, "weight_decay and grad_clip must be ≥ 0")
    betas = merged["betas"]
    if betas != "auto":
        if not (isinstance(betas, (list, tuple)) and len(betas) == 2):
            raise _fail(where, f"betas must be 'auto' or [beta1, beta2], got {betas!r}")
        betas = tuple(_number(b, f"{where}: betas") for b in betas)
        if not all(0 <= b < 1 for b in betas):
            raise _fail(where, f"betas must lie in [0, 1), got {list(betas)}")
    eps = merged["eps"] if merged["eps"] == "auto" else _number(merged["eps"], f"{where}: eps")
    precision = merged["precision"]
    if precision not in _PRECISIONS:
        raise _fail(where, f"precision must be one of {_PRECISIONS}, got {precision!r}")

    # replaced, never merged: the mode decides which keys belong (a stage's {mode: learned, max: 100} must not
    # inherit the default's value, and a misspelt key must not hide behind one)
    logit = schema.check_logit_scale(raw.get("logit_scale", defaults.get("logit_scale",
                                                                         STAGE_DEFAULTS["logit_scale"])), where)
    evaluation = schema.check_eval(merged["eval"], where)
    if evaluation["tasks"] is None:
        from .data.profiles import EVAL_SETS

        built = data.resolved_root() / "eval"
        evaluation["tasks"] = [t for t in EVAL_SETS if (built / t).is_dir()] if built.is_dir() else list(EVAL_SETS)
    if evaluation["imagenet"]:
        evaluation["imagenet"] = _resolve_path(evaluation["imagenet"], base_dir)

    auto = None
    if kind == "auto":
        auto = schema.check_auto(merged["auto"], where)
        if auto["mask_steps"] >= steps:  # the stage is mask phase, prune, then distillation of the pruned student
            raise _fail(where, f"auto.mask_steps ({auto['mask_steps']}) must be fewer than the stage's {steps} "
                               "steps: the pruned student is distilled for the rest")
    elif merged["auto"] is not None:
        raise _fail(where, "auto: settings are for kind: auto stages only")
    if merged["teacher_cache"] and not has_teacher:
        raise _fail(where, "teacher_cache needs a teacher")
    if merged["teacher_cache"] and data.streamed:
        raise _fail(where, "teacher_cache needs the in-memory loader (a stream's sample ids are not known ahead)")
    if merged["teacher_cache"] and data.fixed_views == 0:
        raise _fail(where, "teacher_cache needs data.fixed_views > 0: a view fixes a sample's augmentation and "
                           "caption, so its teacher embedding can be stored (augment: false for exact equality)")
    inherit = schema.check_inherit(merged["inherit"], where)

    return StageSpec(
        name=name, student=student, kind=kind, init=init, init_model=init_model, init_weights=init_weights,
        init_recipe=source_recipe, inherit=inherit,
        loss=_parse_loss(merged["loss"], f"{where}: loss"), data=data, steps=steps, batch=batch, lr=lr,
        warmup_steps=warmup_steps, weight_decay=weight_decay, betas=betas, eps=eps, grad_clip=grad_clip,
        precision=precision, logit_scale=logit, eval=evaluation, teacher_cache=bool(merged["teacher_cache"]),
        checkpoint_every=_number(merged["checkpoint_every"], f"{where}: checkpoint_every", int, low=1),
        log_every=max(1, _number(merged["log_every"], f"{where}: log_every", int)), auto=auto,
        compile=schema.boolean(merged["compile"], f"{where}: compile"))


def _epoch_size(data: DataSpec, where: str) -> int:
    root = data.resolved_root()
    for sizes in (root / "train" / "sizes.json", root / "sizes.json"):
        if sizes.is_file():
            return int(sum(json.loads(sizes.read_text()).values()))
    raise _fail(where, f"epochs need the training shards' sizes.json under {root}; build the data or give samples")


def parse_recipe(raw: dict[str, Any], path: Path | None = None, seed: int | None = None) -> Recipe:
    """A recipe from its YAML mapping. ``path`` (the file) anchors relative paths; ``seed`` overrides the seed."""
    where = f"recipe {path}" if path else "recipe"
    if not isinstance(raw, dict):
        raise _fail(where, "expected a YAML mapping at the top level")
    unknown = set(raw) - _RECIPE_KEYS
    if unknown:
        raise _fail(where, f"unknown top-level keys {sorted(unknown)}; known: {sorted(_RECIPE_KEYS)}")
    base_dir = path.parent if path else None
    teacher = _parse_teacher(raw.get("teacher"), base_dir)
    defaults = raw.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise _fail(where, "defaults must be a mapping")
    stages_raw = raw.get("stages")
    if not isinstance(stages_raw, list) or not stages_raw:
        raise _fail(where, "stages: give a non-empty list of stages")
    stages = tuple(_parse_stage(s, i, defaults, teacher.kind != "none", base_dir) for i, s in enumerate(stages_raw))
    if path is not None and any(s.init_recipe == str(path) for s in stages):
        raise _fail(where, "a stage cannot inherit from its own recipe's run (init: {train: ...} names this file)")
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise _fail(where, f"stage names must be unique, got {names}")
    device = raw.get("device", "auto")
    if device not in _DEVICES:
        raise _fail(where, f"device must be one of {_DEVICES}, got {device!r}")
    return Recipe(name=str(raw.get("name") or (path.stem if path else "recipe")), path=path,
                  seed=_number(raw.get("seed", 0) if seed is None else seed, f"{where}: seed", int),
                  device=device, teacher=teacher, stages=stages)


def load_recipe(path: str | Path, seed: int | None = None) -> Recipe:
    """Read and validate a recipe file (syntax and values; the inputs it names are checked by :func:`check_inputs`)."""
    path = Path(path).expanduser().absolute()
    if not path.is_file():
        raise TinyCLIPError(f"recipe {path} does not exist; the shipped recipes are in recipes/")
    return parse_recipe(schema.read_yaml(path), path, seed)


# ----------------------------------------------------------------------------------------------- resolution
def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise TinyCLIPError("device: cuda was asked for but no GPU is visible; use device: auto or cpu")
    return device


def resolve_precision(precision: str, device: str) -> str:
    if precision == "auto":
        return "amp" if device == "cuda" else "fp32"
    if precision == "amp" and device != "cuda":
        raise TinyCLIPError("precision: amp (fp16 + GradScaler) needs a GPU; use fp32 or bf16 on CPU")
    return precision


def model_cfg_of(name: str) -> dict[str, Any]:
    """The open_clip config of a registered name or a ``local-dir:`` export."""
    from . import zoo

    if name.startswith("local-dir:"):
        from .export import read_open_clip_config

        return read_open_clip_config(name)["model_cfg"]
    return zoo.model_config(name)


def is_vit(model_cfg: dict[str, Any]) -> bool:
    """A ViT vision tower (open_clip builds a ModifiedResNet when ``vision_cfg.layers`` is a list)."""
    return not isinstance(model_cfg["vision_cfg"].get("layers"), (list, tuple))


def adamw_hyper(stage: StageSpec, model_cfg: dict[str, Any]) -> tuple[tuple[float, float], float]:
    """AdamW betas/eps: the official code picks (0.9, 0.98), 1e-6 for models named "*vit*" and (0.9, 0.999), 1e-8
    otherwise. We decide by the vision tower's type, which agrees on every official name and also covers the
    smoke/mini ViTs whose names lack "vit"."""
    vit = is_vit(model_cfg)
    betas = stage.betas if stage.betas != "auto" else ((0.9, 0.98) if vit else (0.9, 0.999))
    eps = stage.eps if stage.eps != "auto" else (1e-6 if vit else 1e-8)
    return tuple(betas), float(eps)


def teacher_recipe(recipe: Recipe) -> Recipe:
    """The recipe that trains this recipe's teacher (``teacher: {train: FILE}``)."""
    if recipe.teacher.kind != "train":
        raise TinyCLIPError(f"recipe {recipe.name!r} does not train its teacher")
    sub = load_recipe(recipe.teacher.recipe)
    if sub.teacher.kind == "train" and Path(sub.teacher.recipe) == recipe.path:
        raise TinyCLIPError(f"recipe {recipe.path} and its teacher recipe name each other as teacher")
    return sub


def inherited_recipe(stage: StageSpec) -> Recipe:
    """The recipe whose final student an ``init: {train: RECIPE}`` stage inherits from."""
    if stage.init != "run":
        raise TinyCLIPError(f"stage {stage.name!r} does not inherit from another recipe's run")
    return load_recipe(stage.init_recipe)


def prerequisite_recipes(recipe: Recipe) -> list[Recipe]:
    """The other recipes whose runs this one needs before it can train: the recipe that trains its teacher and
    those whose final students its stages inherit from (each listed once, in that order)."""
    out = [teacher_recipe(recipe)] if recipe.teacher.kind == "train" else []
    out += [inherited_recipe(s) for s in recipe.stages if s.init == "run"]
    unique: dict[Path | None, Recipe] = {}
    for sub in out:
        unique.setdefault(sub.path, sub)
    return list(unique.values())


def teacher_identity(recipe: Recipe, *, device: str, world_size: int) -> dict[str, Any]:
    """What the teacher *is*, for the students' run identity: a run hash, a weights digest, or a cache id."""
    spec = recipe.teacher
    if spec.kind == "none":
        return {"kind": "none"}
    if spec.kind == "train":
        sub = teacher_recipe(recipe)
        configs = resolve_recipe(sub, device=device, world_size=world_size)
        return {"kind": "run", "run": config_hash(configs[-1]), "model_cfg": configs[-1]["student"]["model_cfg"]}
    if spec.kind in ("embeddings", "lit"):
        from .teacher_cache import TeacherEmbeddingCache

        path = spec.embeddings if spec.kind == "embeddings" else lit_cache_dir(recipe)
        if spec.kind == "lit" and not Path(path).is_dir():
            raise TinyCLIPError(f"the LiT teacher of recipe {recipe.name!r} is not built yet ({path}); "
                                "train the recipe to build it")
        return {"kind": "embeddings", "cache": TeacherEmbeddingCache.open(path).cache_id}
    ident = {"kind": "model", **model_identity(spec.model, spec.weights)}
    if spec.weights is None:  # randomly initialised teacher: its weights are a function of the recipe's seed
        ident["random_init_seed"] = recipe.seed
    return ident


def model_identity(model: str, weights: str | None) -> dict[str, Any]:
    """A model by content: its config and the SHA-256 of its weights file (or the pretrained tag), so the same
    weights under another path are the same model and changed weights under the same path are not."""
    if model.startswith("local-dir:"):
        from .export import WEIGHTS_NAME

        weights_file = Path(model[len("local-dir:"):]) / WEIGHTS_NAME
        return {"model": "local-dir", "model_cfg": model_cfg_of(model),
                "weights": {"sha256": file_digest(weights_file)}}
    if weights is None:
        ident = None
    elif is_weights_file(weights):
        ident = {"sha256": file_digest(weights)}
    else:
        ident = {"tag": weights}
    return {"model": model, "model_cfg": model_cfg_of(model), "weights": ident}


def data_identity(data: DataSpec) -> dict[str, Any]:
    """The data a stage trains on: profile (or root path), mixture weights, augmentation, and a fingerprint of the
    built data set when it has one (so a rebuilt data set is not confused with the old one)."""
    root = data.resolved_root()
    ident: dict[str, Any] = asdict(data)
    ident["root"] = None if data.profile else str(root)
    ident["loader"] = "stream" if data.streamed else "memory"
    if not data.streamed:
        del ident["workers"]  # a stream's order depends on its loader workers; the in-memory loader's does not
    stamp = root / "build.json"  # written by `tinyclip data build` (smoke, mini)
    if stamp.is_file():
        built = json.loads(stamp.read_text())
        ident["fingerprint"] = built.get("fingerprint")
        ident["content"] = built.get("content")  # digest of the built shards: a rebuild that differs is new data
    elif (root / "sizes.json").is_file():  # user-supplied webdataset shards (paper profile)
        ident["fingerprint"] = file_digest(root / "sizes.json")[:16]
    return ident


def resolve_stage(recipe: Recipe, index: int, *, teacher: dict[str, Any], previous: str | None,
                  device: str, world_size: int) -> dict[str, Any]:
    """The plain dict that identifies stage ``index``'s run. ``previous`` is the hash of stage index−1's run."""
    stage = recipe.stages[index]
    student_cfg = model_cfg_of(stage.student)
    betas, eps = adamw_hyper(stage, student_cfg)
    if stage.init == "teacher":
        init = {"from": "teacher", "inherit": stage.inherit}
    elif stage.init == "previous":
        init = {"from": "previous", "run": previous, "inherit": stage.inherit}
    elif stage.init == "model":
        init = {"from": "model", **model_identity(stage.init_model, stage.init_weights), "inherit": stage.inherit}
    elif stage.init == "run":  # another recipe's final student, by its run hash (as a trained teacher is)
        source = resolve_recipe(inherited_recipe(stage), device=device, world_size=world_size)[-1]
        init = {"from": "run", "run": config_hash(source), "inherit": stage.inherit}
    else:
        init = {"from": "random"}
    return {
        "format": RUN_FORMAT,
        "kind": stage.kind,
        "student": {"name": stage.student, "model_cfg": student_cfg},
        "teacher": teacher,
        "init": init,
        "loss": stage.loss,
        "data": data_identity(stage.data),
        "steps": stage.steps,
        "batch": stage.batch,
        "optim": {"lr": stage.lr, "warmup_steps": stage.warmup_steps, "weight_decay": stage.weight_decay,
                  "betas": list(betas), "eps": eps, "grad_clip": stage.grad_clip},
        "precision": resolve_precision(stage.precision, device),
        "device": device,
        "world_size": world_size,
        "logit_scale": stage.logit_scale,
        "eval": stage.eval,
        "teacher_cache": stage.teacher_cache,
        "auto": stage.auto,
        "seed": recipe.seed,
        **({"compile": True} if stage.compile else {}),  # absent when false: older runs keep their hashes
    }


def resolve_recipe(recipe: Recipe, *, device: str | None = None, world_size: int = 1) -> list[dict[str, Any]]:
    """Every stage's resolved config, chained: each ``init: previous`` names the run hash of the stage before."""
    device = device or resolve_device(recipe.device)
    teacher = teacher_identity(recipe, device=device, world_size=world_size)
    configs: list[dict[str, Any]] = []
    for index in range(len(recipe.stages)):
        previous = config_hash(configs[-1]) if configs else None
        configs.append(resolve_stage(recipe, index, teacher=teacher, previous=previous, device=device,
                                     world_size=world_size))
    return configs


# ----------------------------------------------------------------------------------------------- input checks
def _size(model_cfg: dict[str, Any]) -> int:
    from . import zoo

    counts = zoo.count_params(zoo.build_shape_model(model_cfg))
    return counts["vision"] + counts["text"]


def check_inputs(recipe: Recipe, _seen: tuple[Path, ...] = ()) -> None:
    """Everything a recipe names must exist and fit before the first step: models, teacher weights, data roots,
    student ≤ teacher, inheritable shapes. Raises a one-line TinyCLIPError naming the stage and the fix."""
    spec = recipe.teacher
    teacher_cfg: dict[str, Any] | None = None
    if spec.kind == "train":
        if recipe.path in _seen:
            raise TinyCLIPError(f"recipe {recipe.path} names itself as its teacher (a cycle)")
        sub = teacher_recipe(recipe)
        check_inputs(sub, _seen + (recipe.path,))
        teacher_cfg = model_cfg_of(sub.stages[-1].student)
    elif spec.kind == "model":
        teacher_cfg = _check_model_weights(spec.model, spec.weights, "teacher")
    elif spec.kind == "embeddings":
        if not Path(spec.embeddings).is_dir():
            raise TinyCLIPError(f"teacher embedding cache {spec.embeddings} does not exist; build it first")
    elif spec.kind == "lit":
        views = {s.data.fixed_views for s in recipe.stages}
        if len(views) != 1 or 0 in views or not all(s.teacher_cache for s in recipe.stages):
            raise TinyCLIPError(f"recipe {recipe.name!r}: a LiT teacher exists only as cached embeddings; give every "
                                "stage teacher_cache: true and the same data.fixed_views > 0")

    previous_cfg: dict[str, Any] | None = None
    previous_kind: str | None = None
    for stage in recipe.stages:
        where = f"stage {stage.name!r}"
        student_cfg = model_cfg_of(stage.student)
        root = stage.data.resolved_root()
        if not root.exists():
            hint = (f"build it with `tinyclip data build --profile {stage.data.profile}`" if stage.data.profile
                    else "check data.root")
            raise TinyCLIPError(f"{where}: data folder {root} does not exist; {hint}")
        for task in stage.eval["tasks"]:
            if not (root / "eval" / task / "test").is_dir():
                raise TinyCLIPError(f"{where}: evaluation set {task} is missing under {root / 'eval'}; rebuild the "
                                    "data set or change eval.tasks")
        if stage.eval["imagenet"] and not Path(stage.eval["imagenet"]).exists():
            raise TinyCLIPError(f"{where}: eval.imagenet {stage.eval['imagenet']} does not exist")
        if teacher_cfg is not None:
            if _size(student_cfg) > _size(teacher_cfg):
                raise TinyCLIPError(f"{where}: student {stage.student} is larger than its teacher; "
                                    "distil into a smaller model")
            for key, a, b in (("image size", student_cfg["vision_cfg"].get("image_size"),
                               teacher_cfg["vision_cfg"].get("image_size")),
                              ("context length", student_cfg["text_cfg"].get("context_length", 77),
                               teacher_cfg["text_cfg"].get("context_length", 77))):
                if a != b:
                    raise TinyCLIPError(f"{where}: student and teacher differ in {key} ({a} vs {b}); they read "
                                        "the same batch, so use a teacher embedding cache for such a teacher")
        if stage.kind == "manual" and stage.init == "previous" and previous_kind == "auto":
            raise TinyCLIPError(f"{where}: a manual stage cannot inherit from the previous auto stage's pruned "
                                "student (irregular widths); make this stage kind: auto as well")
        source = {"teacher": teacher_cfg, "previous": previous_cfg}.get(stage.init)
        if stage.init == "model":
            source = _check_model_weights(stage.init_model, stage.init_weights, f"{where}: init")
        if stage.init == "run":
            sub = inherited_recipe(stage)
            if sub.path in _seen + (recipe.path,):
                raise TinyCLIPError(f"{where}: init recipe {sub.path} leads back to {recipe.path} (a cycle)")
            if sub.stages[-1].kind != "manual":
                raise TinyCLIPError(f"{where}: init recipe {sub.path} ends in a pruned (auto) student, which manual "
                                    "inheritance cannot read; name a recipe whose last stage is manual")
            check_inputs(sub, _seen + (recipe.path,))
            source = model_cfg_of(sub.stages[-1].student)
        if stage.kind == "manual" and source is not None:
            from .inherit.manual import check_inheritable

            try:
                check_inheritable(source, student_cfg)
            except TinyCLIPError as exc:
                raise TinyCLIPError(f"{where}: cannot inherit {stage.student} from its {stage.init} ({exc})") \
                    from None
        if stage.kind == "manual" and stage.init == "teacher" and teacher_cfg is None:
            raise TinyCLIPError(f"{where}: init: teacher needs a teacher model (this recipe's teacher is "
                                f"{spec.kind}); use init: random")
        previous_cfg, previous_kind = student_cfg, stage.kind


def _check_model_weights(model: str, weights: str | None, where: str) -> dict[str, Any]:
    cfg = model_cfg_of(model)
    if weights is not None and is_weights_file(weights):
        if not Path(weights).is_file():
            raise TinyCLIPError(f"{where}: weights file {weights} does not exist; give an existing checkpoint file, "
                                "a pretrained tag, or null")
        import open_clip

        try:  # loaded once here, before any run folder exists: corrupt, truncated or another model's weights
            loaded = open_clip.create_model(model, pretrained=weights)
        except Exception as exc:  # noqa: BLE001 — torch, safetensors and open_clip raise many types
            raise TinyCLIPError(f"{where}: weights file {weights} does not load into {model} "
                                f"({one_line(exc, 120, with_type=True)}); give a checkpoint of that model") from None
        bad = next((name for name, t in loaded.state_dict().items() if t.is_floating_point() and not t.isfinite().all()),
                   None)
        if bad is not None:   # every loss would be NaN: say so now, not at the first logged step
            raise TinyCLIPError(f"{where}: weights file {weights} holds non-finite values (first in {bad}); "
                                "give an intact checkpoint")
    return cfg
