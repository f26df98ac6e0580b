"""Teacher training and multi-stage progressive distillation (TinyCLIP paper §3.3).

TinyCLIP compresses a CLIP teacher in stages: each stage's student inherits its weights from the previous,
larger model (paper §3.2) and is distilled from the *original* teacher by affinity mimicking (§3.1), so a
student far smaller than the teacher is reached in steps (e.g. ViT-B/32 → 61M → 40M) instead of one jump.

:func:`train_stage` is one stage, readable top to bottom. Each step is

    (teacher forward, or teacher-embedding-cache lookup) → student forward → DistillationLoss → backward
    → gradient clipping → AdamW (linear warm-up + cosine lr) → logit-scale handling

with checkpoints for an exact ``--resume``, metrics to ``metrics.jsonl``, and evaluation at the end (and on an
``eval.every`` schedule, points of the learning curve: :mod:`tinyclip.curve`). An auto
stage (paper §3.2, :mod:`tinyclip.inherit.auto`) runs the same loop on ``MaskedCLIP(student)`` for its first
``mask_steps`` steps (the Lagrangian sparsity term added to the loss, a MaskOptimizer step after AdamW), prunes
to a dense PrunedCLIP and distils that with a fresh AdamW for the rest; resume works in either phase. Everything
else lives in its own module: recipes (:mod:`tinyclip.recipe`), run folders (:mod:`tinyclip.runs`), the cache
(:mod:`tinyclip.teacher_cache`), data (:mod:`tinyclip.data`), losses (:mod:`tinyclip.losses`), the recipe runner
that chains stages and trains the teacher a recipe needs (:mod:`tinyclip.runner`), recipes and seeds in parallel
processes (:mod:`tinyclip.jobs`) and the ``tinyclip train-teacher / distill / smoke`` commands
(:mod:`tinyclip.commands`). A teacher is trained by the same loop: a recipe without a teacher, a random-init
student and the contrastive loss.

Deviations from the official code (docs/official_code.md §1.3, §5; docs/deviations.md), each deliberate:

* A non-finite loss stops the run with an error (at the next logging step: the check reads a flag kept on the
  device, so the steps between run without waiting for the accelerator); the official loop skips such a step and
  aborts after 100 in a row. (With fp16 AMP, overflowing *gradients* are still skipped by the GradScaler, as officially.)
* Fixed logit scale (official ``--logit-scale 50``): the student's scale is set to log 50 *before* the first
  step and frozen; officially it is reset after each step, so the first step runs at the initial 14.3.
* AdamW betas/eps are chosen by the vision tower type instead of by "vit" in the model name (same result for
  every official model; see :func:`tinyclip.recipe.adamw_hyper`). One AdamW with two parameter groups replaces
  the official three optimisers (per-parameter AdamW: identical updates).
* Distributed: one DDP wrapper around student + loss module instead of one per tower; with
  ``local_loss`` + ``gather_with_grad`` the gradients equal a one-process run on the global batch.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import logging
import math
import os
import random
import shutil
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from tqdm.auto import tqdm

from . import curve
from .errors import TinyCLIPError
from .inherit.auto import AutoInheritSpec, MaskedCLIP, MaskOptimizer
from .pruned import PrunedCLIP, PrunedConfig, param_counts, pruned_architecture, save_pruned, to_pruned
from .recipe import StageSpec
from .runs import Run

if TYPE_CHECKING:
    from .teacher_cache import TeacherEmbeddingCache

log = logging.getLogger(__name__)


STATUS_ENV = "TINYCLIP_STATUS_FILE"


def _write_status(stage: StageSpec, done: int, start_step: int, step_time: float) -> None:
    """Where this stage stands, for the status lines of parallel jobs (:func:`tinyclip.jobs.run_many` sets
    ``$TINYCLIP_STATUS_FILE``): stage, steps done and total, and the seconds per step so far."""
    path = os.environ.get(STATUS_ENV)
    if path:
        per_step = step_time / max(done - start_step, 1)
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            json.dump({"stage": stage.name, "step": done, "steps": stage.steps, "s_per_step": per_step}, f)
        os.replace(tmp, path)


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

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order (a list of one without torchrun)."""
        if self.world_size <= 1:
            return [obj]
        objs: list[Any] = [None] * self.world_size
        dist.all_gather_object(objs, obj)
        return objs


def train_stage(run: Run, stage: StageSpec, *, seed: int, teacher: "Teacher | None", student: nn.Module,
                data: Any, evaluate: Callable[..., dict], world: World, device: str,
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
        _set_rng_state(state.get("rng_ranks", [state["rng"]] * world.world_size)[world.rank])  # this rank's stream
        if world.is_main:
            run.truncate_metrics(start_step)  # the steps after the checkpoint are logged again below
    world.barrier()
    if stage.eval["every"] and start_step == 0:  # an eval schedule's curve starts with the untrained student
        curve.record_point(run, masked or student, evaluate, done=0, batch=stage.batch, world=world)

    progress = tqdm(total=stage.steps * stage.batch, initial=start_step * stage.batch, unit="pair",
                    unit_scale=True, desc=f"{stage.name}", disable=not world.is_main or _quiet(),
                    dynamic_ncols=True, mininterval=1.0)
    # batches are built ahead (worker processes on CPU, the accelerator itself for an in-memory set on GPU);
    # each is still the pure function data.batch(step, ...) computes. On CPU one worker keeps ahead (a batch
    # costs a few % of a step) and more would take cores from the step. A source without ``batches`` (a
    # benchmark's timing wrapper, a test double) is asked step by step.
    on_gpu = device.startswith("cuda")
    workers = stage.data.workers if on_gpu else min(stage.data.workers, 1)
    steps = range(start_step, stage.steps)
    batches = (data.batches(steps, stage.batch, seed, world.rank, world.world_size, workers=workers,
                            pin_memory=on_gpu) if hasattr(type(data), "batches")
               else (data.batch(step, stage.batch, seed, world.rank, world.world_size) for step in steps))
    batches = iter(batches)
    fixed_t_scale = torch.tensor(stage.logit_scale["value"], device=device) if fixed_scale else None
    first_bad = torch.full((), -1, dtype=torch.long, device=device)  # first step with a non-finite loss
    record: dict[str, Any] = {}
    t_last, logged_step, step_time, data_wait = time.time(), start_step, 0.0, 0.0
    for step in steps:
        t0 = time.time()
        lr = cosine_lr(step, stage.lr, stage.warmup_steps, stage.steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        images, tokens, sample_ids = next(batches)
        data_wait += time.time() - t0
        images, tokens = images.to(device, non_blocking=True), tokens.to(device, non_blocking=True)

        # 1. teacher: embeddings from the cache, or a frozen forward pass (no gradients)
        t_image = t_text = t_scale = None
        if teacher is not None:
            with autocast():
                t_image, t_text, t_scale = teacher.embed(images, tokens, sample_ids)
            if fixed_scale:
                t_scale = fixed_t_scale

        # 2. student forward + distillation loss (the loss runs in fp32 whatever the autocast); in the mask
        #    phase the forward samples the gates and the Lagrangian sparsity term is added (paper §3.2)
        with autocast():
            out = model(images, tokens, t_image, t_text, t_scale)
        if masked is not None:
            lagrangian, sparsity_logs = masked.sparsity_loss(step)
            out = {**out, "loss": out["loss"] + lagrangian, "lagrangian": lagrangian}
        loss = out["loss"]
        terms = ["loss" if k == "loss" else f"loss_{k}" for k in out]
        losses = _global_mean([v.detach() for v in out.values()], world)  # on the device until logged
        first_bad = torch.where((first_bad < 0) & ~torch.isfinite(losses[0]), step, first_bad)

        # 3. backward, gradient-norm clipping (weights only, not log-α / λ), AdamW step, then the mask step;
        #    under fp16 loss scaling an overflow anywhere skips the weights, the masks and λ together
        optimizer.zero_grad(set_to_none=True)
        if mask_optimizer is not None:
            mask_optimizer.zero_grad()
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        grad_norm = nn.utils.clip_grad_norm_(params, stage.grad_clip or math.inf)  # returns the norm before
        if mask_optimizer is not None and scaler.is_enabled():
            skip_together(scaler, [optimizer, *mask_optimizer.optimizers])
        scaler.step(optimizer)
        if mask_optimizer is not None:
            mask_optimizer.step(scaler if scaler.is_enabled() else None)
        scaler.update()

        # 4. logit scale: a learned scale is clamped to [0, ln max] (CLIP); a fixed one is frozen
        if not fixed_scale:
            with torch.no_grad():
                student.logit_scale.clamp_(0, math.log(stage.logit_scale["max"]))

        # -- bookkeeping: metrics, progress, checkpoints, periodic eval. Values are read back to the host (a
        # sync with the accelerator) only where they are used: logging, checkpoints, eval, the end, on_step ----
        done = step + 1
        log_now = done % stage.log_every == 0 or done == stage.steps
        eval_now = bool(stage.eval["every"]) and done % stage.eval["every"] == 0 and done < stage.steps
        checkpoint_now = bool(stage.checkpoint_every) and done % stage.checkpoint_every == 0 and done < stage.steps
        prune_now = masked is not None and done == mask_steps
        if log_now or eval_now or checkpoint_now or prune_now or on_step is not None:
            bad = int(first_bad)  # every rank sees the same global mean, so all stop together
            if bad >= 0:
                raise TinyCLIPError(f"stage {stage.name!r}: the loss is not finite at step {bad}; check the "
                                    "teacher weights and data, or lower lr")
            record = {"step": step, "samples": done * stage.batch, "lr": lr,
                      **dict(zip(terms, losses.tolist())), "grad_norm": float(grad_norm),
                      "logit_scale": student.logit_scale.detach().exp().item(),
                      **({"teacher_logit_scale": float(t_scale)} if t_scale is not None else {})}
            if masked is not None:
                record.update({k: float(v) for k, v in sparsity_logs.items()})
            progress.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{lr:.2e}", refresh=False)
        step_time += time.time() - t0
        if world.is_main and log_now:
            if masked is not None:  # the size the prune would give now (0/1 masks)
                for rule in ("deterministic", "cofi"):  # the size the prune gives now, and CoFi's rounding
                    record[f"{rule}_sparsity"] = 1 - masked.deterministic_params(rule)["total"] / masked.reference_params
            record["samples_per_s"] = round((done - logged_step) * stage.batch / max(time.time() - t_last, 1e-9), 2)
            record["data_wait_s"] = round(data_wait, 4)  # time the loop waited for batches since the last record
            t_last, logged_step, data_wait = time.time(), done, 0.0
            run.append_metrics(record)
            _write_status(stage, done, start_step, step_time)
        progress.update(stage.batch)
        if prune_now:
            # the end of the mask phase: prune to a dense student, then plain distillation with a fresh AdamW
            # (official: new optimiser without the L0 group; the lr goes on along the same schedule)
            student, auto_report = _prune(masked, images, tokens, auto, step)
            masked = mask_optimizer = None
            _set_logit_scale(student, stage, trainable=uses_scale)
            model, optimizer, params = _optimisation(student, loss_fn, stage, cfg, world, device)
            if world.is_main:
                run.append_metrics({"step": step, "pruned": {k: v for k, v in auto_report.items() if k != "config"}})
        current = masked or student
        if eval_now:  # a point of the learning curve, per-item outcomes kept (tinyclip.curve)
            curve.record_point(run, current, evaluate, done=done, batch=stage.batch, world=world)
        if checkpoint_now:
            rng = world.gather(_rng_state())  # every rank's stream, so a multi-process resume is exact
            if world.is_main:
                run.save_checkpoint({"step": done, "student": current.state_dict(), "loss": loss_fn.state_dict(),
                                     "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                                     "rng": rng[0], "rng_ranks": rng, "run": run.hash,
                                     **({"mask_optimizer": mask_optimizer.state_dict()} if mask_optimizer else {}),
                                     **({"auto_report": auto_report} if auto_report is not None else {})})
            world.barrier()
        if on_step is not None:
            on_step(step, record)
    progress.close()

    # -- the end: evaluation, export of the student, the FINISHED marker (written last) ----------------------
    summary: dict[str, Any] = {}
    if world.is_main:
        items: dict[str, Any] = {}  # per-item outcomes, for intervals that resample evaluation items
        metrics = evaluate(student, items)
        run.write_json("eval.json", metrics)
        run.write_json("eval_items.json", items)
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
        if hasattr(data, "skipped") and data.skipped():   # damaged samples the loader left out, by reason
            summary["data_skipped"] = data.skipped()
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
    if compiles(stage, student, device):
        model.compile()  # in place: parameter names, state dicts and checkpoints stay those of the eager module
    l0 = ({id(p) for p in student.mask_parameters() + student.lagrangian_parameters()}
          if isinstance(student, MaskedCLIP) else set())
    params = [p for p in model.parameters() if p.requires_grad and id(p) not in l0]
    betas, eps = cfg["optim"]["betas"], cfg["optim"]["eps"]
    # fused on CUDA: one kernel for all tensors, and with fp16 loss scaling it skips an overflowed step
    # without reading the flag back to the host
    optimizer = torch.optim.AdamW(param_groups(model, stage.weight_decay, skip=l0), lr=stage.lr,
                                  betas=tuple(betas), eps=eps, **({"fused": True} if device.startswith("cuda") else {}))
    return model, optimizer, params


def compiles(stage: StageSpec, student: nn.Module, device: str) -> bool:
    """Whether the stage loop runs the student + loss through ``torch.compile`` (recipe ``compile: true``): on
    CUDA only (on a CPU the compile costs minutes and the switch is ignored, with a log line), and not in an
    auto stage's mask phase (its gates are sampled afresh every step); the pruned student of that stage is
    compiled. The student itself stays eager for evaluation and export; the first compiled steps pay for the
    compile (benchmarks/bench_gpu_step.py, rows ``*_compile``)."""
    if not stage.compile:
        return False
    if not device.startswith("cuda"):
        log.info("stage %r: compile: true is ignored on %s (torch.compile is used on CUDA only)", stage.name, device)
        return False
    return not isinstance(student, MaskedCLIP)


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


def _global_mean(values: list[torch.Tensor], world: World) -> torch.Tensor:
    """Loss terms averaged over ranks (each rank's loss covers its own rows of the global batch, local_loss), as
    one tensor on the device: reading it back waits for the accelerator, so the loop does that only to log."""
    stacked = torch.stack([v.float() for v in values])
    if world.world_size > 1:
        dist.all_reduce(stacked)
        stacked /= world.world_size
    return stacked


def skip_together(scaler: torch.amp.GradScaler, optimizers: Sequence[torch.optim.Optimizer]) -> None:
    """fp16 loss scaling: unscale every optimizer and give each the union of their overflow flags, so a step
    that overflows anywhere (weights, log-α or λ) is skipped by all of them; by default each optimizer skips on
    its own gradients only, and the masks could move while the weights stand still. Call before the
    ``scaler.step`` calls. (GradScaler keeps the flags in ``_per_optimizer_states``; no public API sets them.)"""
    from torch.amp.grad_scaler import OptState

    states = [scaler._per_optimizer_states[id(opt)] for opt in optimizers]
    for opt, state in zip(optimizers, states):
        if state["stage"] is not OptState.UNSCALED:
            scaler.unscale_(opt)
    flags = [flag for state in states for flag in state["found_inf_per_device"].values()]
    any_inf = torch.stack([f.to(flags[0].device) for f in flags]).amax()
    for state in states:
        for device in state["found_inf_per_device"]:
            state["found_inf_per_device"][device] = any_inf.to(device)


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
        self._scale: torch.Tensor | None = None
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
        if self._scale is None or self._scale.device != images.device:
            self._scale = torch.tensor(self.logit_scale, device=images.device)  # made once: a copy per step syncs
        scale = self._scale
        if self.cache is None:
            return *self.forward(images, tokens), scale
        compute = (lambda: self.forward(images, tokens)) if self.model is not None else None
        image, text = self.cache.embed(sample_ids, compute)
        return image.to(images.device), text.to(images.device), scale


# Ranks wait in a barrier while rank 0 evaluates (and writes checkpoints): the collective timeout must outlast an
# ImageNet zero-shot evaluation (50,000 images and 1,000 classes x 80 prompts), which takes minutes on a GPU and
# can take an hour on CPU; torch's default (10 min for NCCL) would abort the job.
COLLECTIVE_TIMEOUT = datetime.timedelta(hours=2)


def init_world(device: str = "cpu") -> World:
    """Join the torchrun job described by the environment, if any: NCCL when the recipe trains on CUDA, gloo
    when it trains on the CPU (also on a machine with GPUs)."""
    if "WORLD_SIZE" not in os.environ:  # not under torchrun (a 1-process torchrun job still joins its group)
        return World()
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT)
    return World(rank=dist.get_rank(), world_size=dist.get_world_size(),
                 local_rank=int(os.environ.get("LOCAL_RANK", "0")))
