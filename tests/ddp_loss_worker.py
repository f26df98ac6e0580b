"""torchrun worker for tests/test_losses.py: DistillationLoss under DDP (gloo, CPU) vs one process.

Run as ``python -m torch.distributed.run --nproc_per_node 2 tests/ddp_loss_worker.py --out DIR``. Each rank
takes its half of a fixed global batch, runs a tiny linear "student" plus the loss (every term on, student
and teacher dims different, so the loss owns a feature projection), back-propagates through a DDP wrapper
and saves its loss values and averaged gradients to ``DIR/rank<r>.pt``, once with ``local_loss=False`` and
once with ``local_loss=True`` (``gather_with_grad=True`` both times). The test imports ``build``,
``global_batch`` and ``step`` from here to compute the one-process reference on the full batch.
"""
from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from tinyclip.losses import DistillationLoss, LossConfig

GLOBAL_BATCH = 8
IMAGE_IN, TEXT_IN = 6, 7
STUDENT_DIM, TEACHER_DIM = 5, 3
LOSS_CONFIG = dict(contrastive=1.0, affinity=1.0, feature=0.5, image_image=0.3, text_text=0.2)


class TinyStudent(nn.Module):
    """Two linear towers and a learned logit scale, with open_clip's output convention."""

    def __init__(self) -> None:
        super().__init__()
        self.image = nn.Linear(IMAGE_IN, STUDENT_DIM)
        self.text = nn.Linear(TEXT_IN, STUDENT_DIM)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))

    def forward(self, images: torch.Tensor, texts: torch.Tensor):
        return (F.normalize(self.image(images), dim=-1), F.normalize(self.text(texts), dim=-1),
                self.logit_scale.exp())


class StudentWithLoss(nn.Module):
    """Student and loss in one module, so one DDP wrapper averages both (the loss owns the projection)."""

    def __init__(self, loss: DistillationLoss) -> None:
        super().__init__()
        self.loss = loss
        self.student = TinyStudent()

    def forward(self, images, texts, teacher_image, teacher_text, teacher_scale):
        s_image, s_text, s_scale = self.student(images, texts)
        return self.loss(s_image, s_text, teacher_image, teacher_text, s_scale, teacher_scale)


def build(local_loss: bool, rank: int, world_size: int) -> StudentWithLoss:
    torch.manual_seed(0)  # identical initial parameters in every process and in the reference
    loss = DistillationLoss(LossConfig(**LOSS_CONFIG), STUDENT_DIM, TEACHER_DIM, rank=rank, world_size=world_size,
                            local_loss=local_loss, gather_with_grad=True)
    return StudentWithLoss(loss)


def global_batch() -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(1234)
    images = torch.randn(GLOBAL_BATCH, IMAGE_IN, generator=g)
    texts = torch.randn(GLOBAL_BATCH, TEXT_IN, generator=g)
    teacher_image = F.normalize(torch.randn(GLOBAL_BATCH, TEACHER_DIM, generator=g), dim=-1)
    teacher_text = F.normalize(torch.randn(GLOBAL_BATCH, TEACHER_DIM, generator=g), dim=-1)
    return images, texts, teacher_image, teacher_text


def step(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> dict:
    """One forward/backward; returns the loss values and every parameter's gradient."""
    out = model(*batch, torch.tensor(30.0))
    out["loss"].backward()
    inner = model.module if hasattr(model, "module") else model
    return {"values": {k: v.item() for k, v in out.items()},
            "grads": {name: p.grad.detach().clone() for name, p in inner.named_parameters()}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    local = GLOBAL_BATCH // world_size
    batch = tuple(x[rank * local:(rank + 1) * local] for x in global_batch())
    results = {}
    for local_loss in (False, True):
        model = DistributedDataParallel(build(local_loss, rank, world_size))  # averages gradients over ranks
        results[local_loss] = step(model, batch)
    torch.save(results, args.out / f"rank{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
