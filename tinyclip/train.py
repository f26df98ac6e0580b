"""Teacher training and multi-stage progressive distillation (TinyCLIP paper §3.3).

TinyCLIP compresses a CLIP teacher in stages: each stage's student inherits its weights from the previous,
larger model (paper §3.2) and is distilled from the *original* teacher by affinity mimicking (§3.1), so a
student far smaller than the teacher is reached in steps (e.g. ViT-B/32 → 61M → 40M) instead of one jump.

:func:`train_stage` is one stage, readable top to bottom. Each step is

    (teacher forward, or teacher-embedding-cache lookup) → student forward → DistillationLoss → backward
    → gradient clipping → AdamW (linear warm-up + cosine lr) → logit-scale handling

with checkpoints for an exact ``--resume``, metrics to ``metrics.jsonl``, and evaluation at the end. An auto
stage (paper §3.2, :mod:`tinyclip.inherit.auto`) runs the same loop on ``MaskedCLIP(student)`` for its first
``mask_steps`` steps (the Lagrangian sparsity term added to the loss, a MaskOptimizer step after AdamW), prunes
to a dense PrunedCLIP and distils that with a fresh AdamW for the rest; resume works in either phase. Everything
else lives in its own module: recipes (:mod:`tinyclip.recipe`), run folders (:mod:`tinyclip.runs`), the cache
(:mod:`tinyclip.teacher_cache`), data (:mod:`tinyclip.data`), losses (:mod:`tinyclip.losses`). Below the
loop: :func:`run_recipe` (chains stages and trains the teacher a recipe needs), :func:`run_many` (recipes and
seeds in parallel processes) and the ``tinyclip train-teacher / distill / smoke`` commands. A teacher is trained
by the same loop: a recipe without a teacher, a random-init student and the contrastive loss.

Deviations from the official code (research/official_impl.md §1.3, §5), each deliberate:

* A non-finite loss stops the run with an error at once; the official loop skips such a step and aborts after
  100 in a row. (With fp16 AMP, overflowing *gradients* are still skipped by the GradScaler, as officially.)
* Fixed logit scale (official ``--logit-scale 50``): the student's scale is set to log 50 *before* the first
  step and frozen; officially it is reset after each step, so the first step runs at the initial 14.3.
* AdamW betas/eps are chosen by the vision tower type instead of by "vit" in the model name (same result for
  every official model; see :func:`tinyclip.recipe.adamw_hyper`). One AdamW with two parameter groups replaces
  the official three optimisers (per-parameter AdamW: identical updates).
* Distributed: one DDP wrapper around student + loss module instead of one per tower; with
  ``local_loss`` + ``gather_with_grad`` the gradients equal a one-process run on the global batch.
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import math
import os
import random
import shutil
import subprocess
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from tqdm.auto import tqdm

from .errors import TinyCLIPError, one_line
from .inherit.auto import AutoInheritSpec, MaskedCLIP, MaskOptimizer
from .pruned import PrunedCLIP, PrunedConfig, param_counts, pruned_architecture, save_pruned, to_pruned
from .recipe import (Recipe, StageSpec, check_inputs, lit_cache_dir, load_recipe, resolve_device, resolve_recipe,
                     teacher_recipe)
from .runs import Run, config_hash, runs_root

if TYPE_CHECKING:
    from .teacher_cache import TeacherEmbeddingCache

log = logging.getLogger(__name__)


# ============================================================================================== one stage
@dataclass
class World:
    """This process's place in a torchrun job (rank 0 of 1 without torchrun)."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()


def train_stage(run: Run, stage: StageSpec, *, seed: int, teacher: "Teacher | None", student: nn.Module,
                data: Any, evaluate: Callable[[nn.Module], dict], world: World, device: str,
                resume: bool = False, on_step: Callable[[int, dict], None] | None = None) -> dict:
    """Train one stage's ``student`` into ``run`` and return the run's summary (paper §3.3, one stage).

    ``data.batch(step, batch_size, seed, rank, world_size)`` gives this rank's slice of the global batch as
    ``(images, tokens, sample_ids)``, a pure function of (seed, step), so a resumed run sees the same batches.
    ``on_step(step, record)`` is called after every step (progress hooks, tests).
    """
    cfg = run.config

    # -- resume: the checkpoint is read first, because in an auto stage it decides the student's form -------
    state = run.load_checkpoint() if resume and run.has_checkpoint() else None
    start_step = state["step"] if state is not None else 0

    # -- automatic inheritance (paper §3.2): the first mask_steps steps train the student under learnable
    # masks (MaskedCLIP); then it is pruned to a smaller dense PrunedCLIP and distilled for the rest --------
    auto = AutoInheritSpec.from_dict(dict(stage.auto)) if stage.kind == "auto" else None
    if auto is not None:
        student = to_pruned(student)  # the masks work on PrunedCLIP (an open_clip CLIP is converted)
    mask_steps = auto.mask_steps if auto is not None else 0
    auto_report: dict[str, Any] | None = state.get("auto_report") if state is not None else None
    if auto is not None and auto_report is not None:  # resumed after the prune: the pruned architecture
        student = PrunedCLIP(PrunedConfig.from_dict(auto_report["config"]))
    masked = MaskedCLIP(student, auto) if auto is not None and start_step < mask_steps else None
    student.to(device).train()
    if masked is not None:
        masked.to(device).train()

    # -- the loss (paper §3.1) and its parameters; the logit scale: learned (clamped) or fixed (frozen) --------
    from .losses import DistillationLoss, LossConfig

    loss_cfg = LossConfig.from_dict(stage.loss)
    teacher = teacher if loss_cfg.needs_teacher else None  # e.g. the contrastive loss of a teacher's training
    student_dim = embed_dim(student)
    teacher_dim = teacher.dim if teacher is not None else student_dim
    loss_fn = DistillationLoss(loss_cfg, student_dim=student_dim, teacher_dim=teacher_dim,
                               rank=world.rank, world_size=world.world_size, local_loss=True,
                               gather_with_grad=True).to(device)
    uses_scale = any(k in loss_cfg.term_weights() for k in ("contrastive", "affinity_i2t", "affinity_t2i",
                                                            "image_image", "text_text"))
    fixed_scale = stage.logit_scale["mode"] == "fixed"
    _set_logit_scale(student, stage, trainable=uses_scale)

    # -- AdamW with the official weight-decay grouping; lr: linear warm-up then cosine -------------------------
    precision = cfg["precision"]
    autocast = _forward_context(precision, device)
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "amp")
    model, optimizer, params = _optimisation(masked or student, loss_fn, stage, cfg, world, device)
    mask_optimizer = MaskOptimizer(masked) if masked is not None else None  # descent on log-α, ascent on λ

    # -- resume: model, loss module, optimisers, scaler and RNG state from the last checkpoint -----------------
    if state is not None:
        (masked or student).load_state_dict(state["student"])
        loss_fn.load_state_dict(state["loss"])
        optimizer.load_state_dict(state["optimizer"])
        if mask_optimizer is not None:
            mask_optimizer.load_state_dict(state["mask_optimizer"])
        scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"])
        if world.is_main:
            run.truncate_metrics(start_step)  # the steps after the checkpoint are logged again below
    world.barrier()

    progress = tqdm(total=stage.steps * stage.batch, initial=start_step * stage.batch, unit="pair",
                    unit_scale=True, desc=f"{stage.name}", disable=not world.is_main or _quiet(),
                    dynamic_ncols=True, mininterval=1.0)
    record: dict[str, Any] = {}
    t_last, logged_step, step_time = time.time(), start_step, 0.0
    for step in range(start_step, stage.steps):
        t0 = time.time()
        lr = cosine_lr(step, stage.lr, stage.warmup_steps, stage.steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        images, tokens, sample_ids = data.batch(step, stage.batch, seed, world.rank, world.world_size)
        images, tokens = images.to(device, non_blocking=True), tokens.to(device, non_blocking=True)

        # 1. teacher: embeddings from the cache, or a frozen forward pass (no gradients)
        t_image = t_text = t_scale = None
        if teacher is not None:
            with autocast():
                t_image, t_text, t_scale = teacher.embed(images, tokens, sample_ids)
            if fixed_scale:
                t_scale = torch.tensor(stage.logit_scale["value"], device=device)

        # 2. student forward + distillation loss (the loss runs in fp32 whatever the autocast); in the mask
        #    phase the forward samples the gates and the Lagrangian sparsity term is added (paper §3.2)
        with autocast():
            out = model(images, tokens, t_image, t_text, t_scale)
        if masked is not None:
            lagrangian, sparsity_logs = masked.sparsity_loss(step)
            out = {**out, "loss": out["loss"] + lagrangian, "lagrangian": lagrangian}
        loss = out["loss"]
        losses = _global_mean({"loss" if k == "loss" else f"loss_{k}": v.detach() for k, v in out.items()}, world)
        if not math.isfinite(losses["loss"]):  # every rank sees the same mean, so all stop together
            raise TinyCLIPError(f"stage {stage.name!r}: the loss is not finite at step {step} ({losses['loss']}); "
                                "check the teacher weights and data, or lower lr")

        # 3. backward, gradient-norm clipping (weights only, not log-α / λ), AdamW step, then the mask step
        optimizer.zero_grad(set_to_none=True)
        if mask_optimizer is not None:
            mask_optimizer.zero_grad()
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        grad_norm = nn.utils.clip_grad_norm_(params, stage.grad_clip or math.inf)  # returns the norm before
        scaler.step(optimizer)
        if mask_optimizer is not None:
            mask_optimizer.step(scaler if scaler.is_enabled() else None)
        scaler.update()

        # 4. logit scale: a learned scale is clamped to [0, ln max] (CLIP); a fixed one is frozen
        if not fixed_scale:
            with torch.no_grad():
                student.logit_scale.clamp_(0, math.log(stage.logit_scale["max"]))

        # -- bookkeeping: metrics, progress, checkpoints, periodic eval ---------------------------------------
        step_time += time.time() - t0
        done = step + 1
        record = {"step": step, "samples": done * stage.batch, "lr": lr, **losses, "grad_norm": float(grad_norm),
                  "logit_scale": student.logit_scale.detach().exp().item(),
                  **({"teacher_logit_scale": float(t_scale)} if t_scale is not None else {})}
        if masked is not None:
            record.update({k: float(v) for k, v in sparsity_logs.items()})
        if world.is_main and (done % stage.log_every == 0 or done == stage.steps):
            if masked is not None:  # the size the prune would give now (0/1 masks)
                for rule in ("deterministic", "cofi"):  # the size the prune gives now, and CoFi's rounding
                    record[f"{rule}_sparsity"] = 1 - masked.deterministic_params(rule)["total"] / masked.reference_params
            record["samples_per_s"] = round((done - logged_step) * stage.batch / max(time.time() - t_last, 1e-9), 2)
            t_last, logged_step = time.time(), done
            run.append_metrics(record)
        progress.update(stage.batch)
        progress.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{lr:.2e}", refresh=False)
        if masked is not None and done == mask_steps:
            # the end of the mask phase: prune to a dense student, then plain distillation with a fresh AdamW
            # (official: new optimiser without the L0 group; the lr goes on along the same schedule)
            student, auto_report = _prune(masked, images, tokens, auto, step)
            masked = mask_optimizer = None
            _set_logit_scale(student, stage, trainable=uses_scale)
            model, optimizer, params = _optimisation(student, loss_fn, stage, cfg, world, device)
            if world.is_main:
                run.append_metrics({"step": step, "pruned": {k: v for k, v in auto_report.items() if k != "config"}})
        current = masked or student
        if stage.eval["every"] and done % stage.eval["every"] == 0 and done < stage.steps:
            if world.is_main:
                run.append_metrics({"step": step, "eval": evaluate(current)})
            world.barrier()
        if stage.checkpoint_every and done % stage.checkpoint_every == 0 and done < stage.steps:
            if world.is_main:
                run.save_checkpoint({"step": done, "student": current.state_dict(), "loss": loss_fn.state_dict(),
                                     "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                                     "rng": _rng_state(), "run": run.hash,
                                     **({"mask_optimizer": mask_optimizer.state_dict()} if mask_optimizer else {}),
                                     **({"auto_report": auto_report} if auto_report is not None else {})})
            world.barrier()
        if on_step is not None:
            on_step(step, record)
    progress.close()

    # -- the end: evaluation, export of the student, the FINISHED marker (written last) ----------------------
    summary: dict[str, Any] = {}
    if world.is_main:
        metrics = evaluate(student)
        run.write_json("eval.json", metrics)
        run.append_metrics({"step": stage.steps - 1, "eval": metrics})
        from . import zoo
        from .export import save_open_clip_dir

        if auto is not None:  # an irregular architecture: tinyclip.pruned's own format (config + safetensors)
            save_pruned(student, run.model_dir)
        else:
            save_open_clip_dir(student, cfg["student"]["model_cfg"], run.model_dir,
                               extra={"run": run.hash, "stage": stage.name, "paper_section": "3.3"})
        final_train = {k: v for k, v in record.items() if k.startswith("loss") or k == "logit_scale"}
        summary = {"run": run.hash, "stage": stage.name, "student": stage.student, "params": zoo.count_params(student),
                   "steps": stage.steps, "samples": stage.steps * stage.batch, "train": final_train,
                   "metrics": metrics, "train_s": round(step_time, 2)}
        if auto is not None:
            summary["auto"] = {k: v for k, v in auto_report.items() if k != "config"}
            summary["architecture"] = pruned_architecture(student)
        if teacher is not None and teacher.cache is not None:
            teacher.cache.flush()
            summary["teacher_cache"] = {"path": str(teacher.cache.path), "hits": teacher.cache.hits,
                                        "misses": teacher.cache.misses}
        run.finish(summary)
        shutil.rmtree(run.checkpoint_path.parent, ignore_errors=True)  # only an unfinished run needs it
    world.barrier()
    return run.summary()


def embed_dim(student: nn.Module) -> int:
    """The joint embedding width of an open_clip CLIP, a PrunedCLIP or a MaskedCLIP."""
    if isinstance(student, (PrunedCLIP, MaskedCLIP)):
        return int(student.config.embed_dim)
    return int(student.text_projection.shape[1])


def _set_logit_scale(student: nn.Module, stage: StageSpec, *, trainable: bool) -> None:
    """Fixed mode: set the scale to log(value) and freeze it; learned mode: train it (when the loss uses it)."""
    fixed = stage.logit_scale["mode"] == "fixed"
    if fixed:
        with torch.no_grad():
            student.logit_scale.fill_(math.log(stage.logit_scale["value"]))
    student.logit_scale.requires_grad_(trainable and not fixed)


def _optimisation(student: nn.Module, loss_fn: nn.Module, stage: StageSpec, cfg: dict, world: World,
                  device: str) -> tuple[nn.Module, torch.optim.Optimizer, list[nn.Parameter]]:
    """The trained module (student + loss, DDP-wrapped under torchrun), its AdamW, and the tensors to clip.
    A MaskedCLIP's log-α and λ are left out of both: MaskOptimizer owns them (own lr, ascent on λ)."""
    model: nn.Module = StudentWithLoss(student, loss_fn)
    if world.world_size > 1:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[world.local_rank]
                                                    if device.startswith("cuda") else None)
    l0 = ({id(p) for p in student.mask_parameters() + student.lagrangian_parameters()}
          if isinstance(student, MaskedCLIP) else set())
    params = [p for p in model.parameters() if p.requires_grad and id(p) not in l0]
    betas, eps = cfg["optim"]["betas"], cfg["optim"]["eps"]
    optimizer = torch.optim.AdamW(param_groups(model, stage.weight_decay, skip=l0), lr=stage.lr,
                                  betas=tuple(betas), eps=eps)
    return model, optimizer, params


@torch.no_grad()
def _prune(masked: MaskedCLIP, images: torch.Tensor, tokens: torch.Tensor, spec: AutoInheritSpec,
           step: int) -> tuple[PrunedCLIP, dict[str, Any]]:
    """The end of the mask phase: the dense pruned student and a report of its size against the original
    teacher (``achieved_sparsity``) and of how far its outputs are from the eval-mode masked model's on a
    few samples of the last batch (they should agree to float rounding)."""
    expected = float(masked.expected_sparsity())
    pruned = masked.prune()
    masked.eval(), pruned.eval()
    probe = images[:8], tokens[:8]
    diff = max(float((a - b).abs().max()) for a, b in zip(masked(*probe)[:2], pruned(*probe)[:2]))
    masked.train(), pruned.train()
    counts = param_counts(pruned)
    report = {"step": step, "target_sparsity": spec.target_sparsity,
              "achieved_sparsity": 1 - counts["total"] / masked.reference_params, "expected_sparsity": expected,
              "deterministic": spec.deterministic,
              "cofi_sparsity": 1 - masked.deterministic_params("cofi")["total"] / masked.reference_params,
              "params": counts["total"], "reference_params": masked.reference_params,
              "pruned_vs_masked_max_abs_diff": diff, "config": pruned.config.to_dict()}
    return pruned, report


class StudentWithLoss(nn.Module):
    """The student and the loss module as one module, so one DDP wrapper averages the gradients of both (the
    loss owns parameters in feature-mimicking mode). ``forward`` returns the loss dict."""

    def __init__(self, student: nn.Module, loss: nn.Module):
        super().__init__()
        self.student = student
        self.loss = loss

    def forward(self, images, tokens, teacher_image, teacher_text, teacher_scale) -> dict[str, torch.Tensor]:
        s_image, s_text, s_scale = self.student(images, tokens)
        return self.loss(s_image, s_text, teacher_image, teacher_text, s_scale, teacher_scale)


def cosine_lr(step: int, base_lr: float, warmup: int, total: int) -> float:
    """The official schedule: ``lr·(s+1)/W`` for s < W, then ``½(1 + cos(π(s−W)/(S−W)))·lr`` (no floor)."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup))) * base_lr


def no_weight_decay(name: str, param: torch.Tensor) -> bool:
    """The official exclusion: tensors below 2-D and any whose name contains bn, ln, bias or logit_scale."""
    return param.ndim < 2 or any(part in name for part in ("bn", "ln", "bias", "logit_scale"))


def param_groups(model: nn.Module, weight_decay: float, skip: set[int] = frozenset()) -> list[dict[str, Any]]:
    """AdamW groups (no decay / decay) of ``model``'s trainable tensors, except those whose id is in ``skip``."""
    decay, plain = [], []
    for name, param in model.named_parameters():
        if param.requires_grad and id(param) not in skip:
            (plain if no_weight_decay(name, param) else decay).append(param)
    return [{"params": plain, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def _forward_context(precision: str, device: str,
                     math_attention: bool = True) -> Callable[[], contextlib.AbstractContextManager]:
    """A factory of the forward pass's context: autocast for amp / bf16 and, on CPU, the plain ("math")
    attention kernel. The fused CPU flash-attention kernel's backward took half of a mini-teacher bf16 step
    (1.6 of 3.2 s); the math kernel doubles the step rate (benchmarks/bench_distill_step.py, which sets
    ``math_attention=False`` to measure torch's default kernel)."""
    device_type = "cuda" if device.startswith("cuda") else "cpu"
    dtype = {"amp": torch.float16, "bf16": torch.bfloat16}.get(precision)

    @contextlib.contextmanager
    def context():
        with contextlib.ExitStack() as stack:
            if dtype is not None:
                stack.enter_context(torch.autocast(device_type, dtype=dtype))
            if device_type == "cpu" and math_attention:
                stack.enter_context(sdpa_kernel(SDPBackend.MATH))
            yield
    return context


def _global_mean(values: dict[str, torch.Tensor], world: World) -> dict[str, float]:
    """Loss terms averaged over ranks: each rank's loss covers its own rows of the global batch (local_loss)."""
    stacked = torch.stack([v.float() for v in values.values()])
    if world.world_size > 1:
        dist.all_reduce(stacked)
        stacked /= world.world_size
    return dict(zip(values, stacked.tolist()))


def _rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _quiet() -> bool:
    return os.environ.get("TINYCLIP_PROGRESS", "1") == "0"


# ============================================================================================== the teacher
class Teacher:
    """The frozen teacher: ``embed`` gives L2-normalised embeddings and the exponentiated logit scale, from the
    teacher-embedding cache when it has the batch, else from a forward pass without gradients."""

    def __init__(self, model: nn.Module | None, cache: "TeacherEmbeddingCache | None" = None):
        self.model = model
        self.cache = cache
        if model is not None:
            self.dim = int(model.text_projection.shape[1])
            self.logit_scale = float(model.logit_scale.exp())
        else:
            self.dim = int(cache.meta["dim"])
            self.logit_scale = cache.logit_scale

    @torch.no_grad()
    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.model.encode_image(images, normalize=True).float()
        text = self.model.encode_text(tokens, normalize=True).float()
        return image, text

    def embed(self, images: torch.Tensor, tokens: torch.Tensor, sample_ids: Sequence[str]
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        scale = torch.tensor(self.logit_scale, device=images.device)
        if self.cache is None:
            return *self.forward(images, tokens), scale
        compute = (lambda: self.forward(images, tokens)) if self.model is not None else None
        image, text = self.cache.embed(sample_ids, compute)
        return image.to(images.device), text.to(images.device), scale


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


# ============================================================================================== recipes
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

    world = world or init_world()
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

            # the student (paper §3.2): inherited from the teacher, the previous stage's student or another
            # model (init: {model, weights}), or random
            torch.manual_seed(recipe.seed)
            inherit = ManualInheritSpec(**spec.inherit)
            previous_auto = index > 0 and recipe.stages[index - 1].kind == "auto"
            if spec.init == "random":
                source = student = load_model(spec.student, None)
            else:
                source = {"teacher": lambda: teacher_model,
                          "previous": lambda: (load_pruned(runs[index - 1].model_dir) if previous_auto
                                               else load_open_clip_dir(runs[index - 1].model_dir)[0]),
                          "model": lambda: load_model(spec.init_model, spec.init_weights)}[spec.init]()
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
    """Build the LiT teacher (:mod:`tinyclip.lit`) of this recipe, or of the recipe that trains its teacher, when
    its embedding cache is missing: the run identities name the cache, so it must exist before they resolve."""
    if recipe.teacher.kind == "train":
        build_lit_teachers(teacher_recipe(recipe), world)
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
    from .data import PairSource, TrainDataSpec

    data = stage.data
    image_size = int(config["student"]["model_cfg"]["vision_cfg"]["image_size"])
    if data.streamed:
        return StreamSource(data.resolved_root(), image_size, data.augment, tokenizer, mean, std, data.workers)
    return PairSource(TrainDataSpec(root=str(data.resolved_root()), weights=data.weights, image_size=image_size,
                                    augment=data.augment, fixed_views=data.fixed_views), tokenizer, mean, std)


class StreamSource:
    """Batches streamed from webdataset shards (LAION-style, the paper profile) behind PairSource's ``batch``.

    A stream is not a function of the step: batches come in shard order, and a resumed run restarts the stream
    at the epoch its step falls in, so resumption is statistically equivalent but not sample-exact (the
    in-memory profiles are exact). Epoch length comes from ``sizes.json`` when the shards have one."""

    def __init__(self, root: Path, image_size: int, augment: bool, tokenizer: Any, mean: Sequence[float],
                 std: Sequence[float], workers: int):
        import open_clip

        folder = root / "train" if (root / "train").is_dir() else root
        self.shards = sorted(str(p) for p in folder.glob("*.tar"))
        if not self.shards:
            raise TinyCLIPError(f"no webdataset shards (*.tar) in {folder}; give the training shards' folder")
        sizes = folder / "sizes.json"
        self.epoch_samples = sum(json.loads(sizes.read_text()).values()) if sizes.is_file() else None
        # the official train transform: RandomResizedCrop(scale 0.9-1.0, bicubic), normalise
        self.preprocess = open_clip.image_transform(image_size, is_train=augment, mean=mean, std=std)
        self.tokenizer, self.workers = tokenizer, workers
        self.iterator, self.epoch = None, 0

    def _start(self, epoch: int, batch_size: int, seed: int, rank: int, world_size: int) -> None:
        from .data import stream_webdataset

        self.epoch = epoch
        self.iterator = iter(stream_webdataset(self.shards, batch_size // world_size, self.preprocess,
                                               self.tokenizer, seed, rank, world_size, self.workers, epoch=epoch))

    def batch(self, step: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        if self.iterator is None:
            epoch = step * batch_size // self.epoch_samples if self.epoch_samples else 0
            self._start(epoch, batch_size, seed, rank, world_size)
        for _ in range(2):
            try:
                return next(self.iterator)
            except StopIteration:  # the epoch is over: the next one reshuffles the shards
                self._start(self.epoch + 1, batch_size, seed, rank, world_size)
        raise TinyCLIPError(f"the shards in {Path(self.shards[0]).parent} yield no full batch of {batch_size}")


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

    def evaluate(student: nn.Module) -> dict:
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
                                  imagenet_root=spec["imagenet"], max_items=spec["max_items"])
    return evaluate


def init_world() -> World:
    """Join the torchrun job described by the environment (gloo on CPU, nccl on GPU), if any."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return World()
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return World(rank=dist.get_rank(), world_size=dist.get_world_size(),
                 local_rank=int(os.environ.get("LOCAL_RANK", "0")))


# ============================================================================================== parallel arms
def run_many(recipes: Sequence[str | Path], seeds: Sequence[int | None] = (None,), *, parallel: int = 2,
             threads: int = 1, resume: bool = False, force: bool = False,
             on_done: Callable[[dict], None] | None = None) -> list[dict]:
    """Run every (recipe, seed) in its own process, ``parallel`` at a time with ``threads`` torch threads each.

    On 2 CPU cores two single-thread runs side by side gave ≈ 1.7× the throughput of one two-thread run. Each
    job is an ordinary ``tinyclip distill`` process, so its run folder and results are those of a serial run
    (runs that two jobs share, e.g. a teacher, are trained once: the second waits on the run's lock). Results
    are bit-identical to a serial run *with the same thread count*; CPU kernels round differently with another
    number of threads, which the run identity deliberately ignores.
    Returns one entry per job: ``{"recipe", "seed", "returncode", "stages"}`` (stages: the job's summaries);
    ``on_done(entry)`` is called as each job ends (progress lines).
    """
    jobs = [(str(r), s) for r in recipes for s in seeds]

    def launch(job: tuple[str, int | None]) -> dict:
        recipe, seed = job
        cmd = [sys.executable, "-m", "tinyclip", "distill", "--recipe", recipe, "--threads", str(threads)]
        cmd += (["--seed", str(seed)] if seed is not None else []) + (["--resume"] if resume else [])
        cmd += ["--force"] if force else []
        # one job at a time shows its progress bars; side by side they would interleave, so they are silenced
        alone = parallel <= 1 or len(jobs) == 1
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
               **({} if alone else {"TINYCLIP_PROGRESS": "0"})}
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=None if alone else subprocess.PIPE, text=True,
                              env=env)
        lines = proc.stdout.strip().splitlines()
        stages = json.loads(lines[-1]) if proc.returncode == 0 and lines else None
        error = None if proc.returncode == 0 else (
            "see its messages above" if alone else (proc.stderr.strip().splitlines() or ["?"])[-1])
        entry = {"recipe": recipe, "seed": seed, "returncode": proc.returncode, "stages": stages, "error": error}
        if on_done is not None:
            on_done(entry)
        return entry

    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        return list(pool.map(launch, jobs))


# ============================================================================================== CLI
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
    world = init_world()
    summaries = run_recipe(recipe, resume=args.resume, force=args.force, stage=args.stage, world=world)
    if world.is_main:
        print(json.dumps(summaries))
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


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    for name, teacher_only, help_text in (
            ("train-teacher", True, "train a CLIP teacher from scratch (contrastive loss) from a recipe"),
            ("distill", False, "multi-stage distillation (paper §3.3) from a recipe")):
        p = subparsers.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--recipe", action="append", required=True, metavar="FILE",
                       help="recipe YAML (repeat to run several, see --parallel)")
        p.add_argument("--seed", action="append", type=int, metavar="N",
                       help="override the recipe's seed (repeat to run several seeds)")
        p.add_argument("--resume", action="store_true", help="continue an interrupted run from its checkpoint")
        p.add_argument("--force", action="store_true", help="retrain finished stages instead of reusing them")
        p.add_argument("--stage", metavar="NAME", help="stop after this stage (and --force only it)")
        p.add_argument("--parallel", type=int, default=1, metavar="N",
                       help="run the recipe × seed jobs in N processes at a time")
        p.add_argument("--threads", type=int, metavar="N", help="torch threads per process")
        p.set_defaults(func=lambda args, t=teacher_only: _run_cli(args, t))
    p = subparsers.add_parser("smoke", help="smoke profile end to end: data, teacher, 2-stage chain, eval; "
                              "prints JSON (teacher, students, wall_s) as its last line")
    p.add_argument("--threads", type=int, metavar="N", help="torch threads")
    p.add_argument("--auto", action="store_true", help="the automatic-inheritance chain (recipes/smoke_auto.yaml), "
                   "then reload and re-evaluate its pruned student; adds target_sparsity, achieved_sparsity and "
                   "pruned_vs_masked_max_abs_diff of the final stage")
    p.set_defaults(func=lambda args: _apply_threads(args.threads) or print(json.dumps(smoke(auto=args.auto))) or 0)
