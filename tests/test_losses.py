"""Tests for tinyclip.losses (paper §3.1 affinity mimicking and the C1 interaction modes)."""
from __future__ import annotations

import importlib.util
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss, DistillClipLoss

from tinyclip.errors import TinyCLIPError
from tinyclip.losses import C1_MODES, DistillationLoss, LossConfig

TESTS = Path(__file__).parent


# -- explicit-loop references (numpy, float64) --------------------------------------------------------------

def unit(rows) -> np.ndarray:
    a = np.asarray(rows, dtype=np.float64)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def loop_logits(scale: float, rows: np.ndarray, cols: np.ndarray) -> list[list[float]]:
    return [[scale * sum(r[d] * c[d] for d in range(len(r))) for c in cols] for r in rows]


def loop_soft_ce(student: list[list[float]], teacher: list[list[float]], skip_diagonal: bool = False) -> float:
    """mean_i -sum_j p_teacher(i, j) log p_student(i, j), softmax over j (j != i when skip_diagonal)."""
    per_row = []
    for i, (s_row, t_row) in enumerate(zip(student, teacher)):
        js = [j for j in range(len(s_row)) if not (skip_diagonal and j == i)]
        t_norm = sum(math.exp(t_row[j]) for j in js)
        s_log_norm = math.log(sum(math.exp(s_row[j]) for j in js))
        per_row.append(-sum(math.exp(t_row[j]) / t_norm * (s_row[j] - s_log_norm) for j in js))
    return sum(per_row) / len(per_row)


def loop_infonce(scale: float, image: np.ndarray, text: np.ndarray) -> float:
    def ce_identity(logits):
        return sum(-(row[i] - math.log(sum(math.exp(v) for v in row))) for i, row in enumerate(logits)) / len(logits)
    return 0.5 * (ce_identity(loop_logits(scale, image, text)) + ce_identity(loop_logits(scale, text, image)))


# 3 samples × 2 dims (student) and 3 × 2 (teacher), unit vectors
S_IMG = unit([[1.0, 0.2], [0.3, 1.0], [-0.6, 0.8]])
S_TXT = unit([[0.9, -0.1], [0.1, 1.0], [-1.0, 0.4]])
T_IMG = unit([[1.0, 0.0], [0.5, 0.9], [-0.2, 1.0]])
T_TXT = unit([[0.8, 0.3], [-0.1, 1.0], [-0.9, 0.1]])
S_SCALE, T_SCALE = 7.0, 12.0


def t(a: np.ndarray) -> torch.Tensor:
    return torch.tensor(a, dtype=torch.float32)


def run(cfg: LossConfig, s_img=S_IMG, s_txt=S_TXT, t_img=T_IMG, t_txt=T_TXT, s_scale=S_SCALE, t_scale=T_SCALE):
    loss = DistillationLoss(cfg, s_img.shape[1], t_img.shape[1])
    return loss(t(s_img), t(s_txt), t(t_img), t(t_txt), torch.tensor(s_scale), torch.tensor(t_scale))


# -- 1. each term against hand computation ------------------------------------------------------------------

def test_affinity_closed_form_uniform_teacher():
    # Teacher features all equal -> uniform target (1/2, 1/2). Orthogonal student pairs with scale s:
    # each row's logits are (s, 0), so CE = -(1/2)[(s - log(1 + e^s)) + (0 - log(1 + e^s))] = log(1 + e^s) - s/2.
    s = 3.0
    student = np.eye(2)
    teacher = unit([[1.0, 1.0], [1.0, 1.0]])
    out = run(LossConfig(affinity=1.0), student, student, teacher, teacher, s_scale=s, t_scale=50.0)
    expected = math.log(1 + math.exp(s)) - s / 2
    assert out["affinity_i2t"].item() == pytest.approx(expected, rel=1e-6)
    assert out["affinity_t2i"].item() == pytest.approx(expected, rel=1e-6)
    assert out["loss"].item() == pytest.approx(2 * expected, rel=1e-6)  # paper: L_I2T + L_T2I


def test_affinity_terms_match_loops():
    out = run(LossConfig(affinity=1.0))
    i2t = loop_soft_ce(loop_logits(S_SCALE, S_IMG, S_TXT), loop_logits(T_SCALE, T_IMG, T_TXT))
    t2i = loop_soft_ce(loop_logits(S_SCALE, S_TXT, S_IMG), loop_logits(T_SCALE, T_TXT, T_IMG))
    assert set(out) == {"loss", "affinity_i2t", "affinity_t2i"}
    assert out["affinity_i2t"].item() == pytest.approx(i2t, rel=1e-5)
    assert out["affinity_t2i"].item() == pytest.approx(t2i, rel=1e-5)
    assert out["loss"].item() == pytest.approx(i2t + t2i, rel=1e-5)
    assert abs(i2t - t2i) > 1e-3  # the two directions really differ on this example


def test_single_direction_modes():
    i2t = loop_soft_ce(loop_logits(S_SCALE, S_IMG, S_TXT), loop_logits(T_SCALE, T_IMG, T_TXT))
    t2i = loop_soft_ce(loop_logits(S_SCALE, S_TXT, S_IMG), loop_logits(T_SCALE, T_TXT, T_IMG))
    out = run(LossConfig.from_mode("i2t"))
    assert set(out) == {"loss", "affinity_i2t"} and out["loss"].item() == pytest.approx(i2t, rel=1e-5)
    out = run(LossConfig.from_mode("t2i"))
    assert set(out) == {"loss", "affinity_t2i"} and out["loss"].item() == pytest.approx(t2i, rel=1e-5)


def test_contrastive_term_matches_loops():
    # no teacher needed for the contrastive-only arm
    out = DistillationLoss(LossConfig.from_mode("contrastive"), 2, 2)(t(S_IMG), t(S_TXT), None, None,
                                                                      torch.tensor(S_SCALE), None)
    assert set(out) == {"loss", "contrastive"}
    assert out["contrastive"].item() == pytest.approx(loop_infonce(S_SCALE, S_IMG, S_TXT), rel=1e-5)


def test_feature_term_equal_dims_is_squared_distance():
    out = run(LossConfig.from_mode("feature"))
    expected = sum(sum((a[d] - b[d]) ** 2 for d in range(2)) for a, b in zip(S_IMG, T_IMG)) / 3 \
        + sum(sum((a[d] - b[d]) ** 2 for d in range(2)) for a, b in zip(S_TXT, T_TXT)) / 3
    assert out["feature"].item() == pytest.approx(expected, rel=1e-5)
    # unit vectors: ||s - t||² = 2 (1 - cos)
    cos = sum(float(a @ b) for a, b in zip(S_IMG, T_IMG)) / 3 + sum(float(a @ b) for a, b in zip(S_TXT, T_TXT)) / 3
    assert out["feature"].item() == pytest.approx(2 * (2 - cos), rel=1e-5)


def test_feature_term_with_projection():
    teacher_img = unit([[1.0, 0.0, 0.5], [0.2, 1.0, 0.0], [0.0, -0.3, 1.0]])
    teacher_txt = unit([[0.7, 0.7, 0.0], [0.0, 1.0, 1.0], [1.0, 0.0, -1.0]])
    W = np.array([[1.0, 0.5], [-0.5, 2.0], [0.3, 0.0]])  # teacher_dim × student_dim
    loss = DistillationLoss(LossConfig.from_mode("feature"), 2, 3)
    with torch.no_grad():
        loss.feature_proj.weight.copy_(t(W))
    out = loss(t(S_IMG), t(S_TXT), t(teacher_img), t(teacher_txt), torch.tensor(S_SCALE), None)

    def mse(student, teacher):
        total = 0.0
        for s, tt in zip(student, teacher):
            projected = [sum(W[k][d] * s[d] for d in range(2)) for k in range(3)]
            total += sum((projected[k] - tt[k]) ** 2 for k in range(3))
        return total / len(student)
    assert out["feature"].item() == pytest.approx(mse(S_IMG, teacher_img) + mse(S_TXT, teacher_txt), rel=1e-5)


@pytest.mark.parametrize("name, s_feat, t_feat", [("image_image", S_IMG, T_IMG), ("text_text", S_TXT, T_TXT)])
def test_single_modality_terms_skip_diagonal(name, s_feat, t_feat):
    out = run(LossConfig.from_mode(name))
    student, teacher = loop_logits(S_SCALE, s_feat, s_feat), loop_logits(T_SCALE, t_feat, t_feat)
    expected = loop_soft_ce(student, teacher, skip_diagonal=True)
    assert set(out) == {"loss", name}
    assert out[name].item() == pytest.approx(expected, rel=1e-5)
    assert abs(expected - loop_soft_ce(student, teacher)) > 1e-3  # keeping the diagonal would differ


def test_total_is_weighted_sum_of_terms():
    cfg = LossConfig(contrastive=0.7, affinity=1.3, affinity_reduction="mean", feature=0.4, image_image=0.2,
                     text_text=0.1)
    out = run(cfg)
    weights = cfg.term_weights()
    assert weights == pytest.approx({"contrastive": 0.7, "affinity_i2t": 0.65, "affinity_t2i": 0.65,
                                     "feature": 0.4, "image_image": 0.2, "text_text": 0.1})
    assert set(out) == {"loss", *weights}
    assert out["loss"].item() == pytest.approx(sum(w * out[k].item() for k, w in weights.items()), rel=1e-6)


# -- 2. equivalence with open_clip's DistillClipLoss ---------------------------------------------------------

@pytest.mark.parametrize("student_dim, teacher_dim", [(4, 4), (6, 3)])
def test_affinity_mean_equals_open_clip_distill_loss(student_dim, teacher_dim):
    g = torch.Generator().manual_seed(0)
    s_img = F.normalize(torch.randn(5, student_dim, generator=g), dim=-1).requires_grad_()
    s_txt = F.normalize(torch.randn(5, student_dim, generator=g), dim=-1).requires_grad_()
    t_img = F.normalize(torch.randn(5, teacher_dim, generator=g), dim=-1)
    t_txt = F.normalize(torch.randn(5, teacher_dim, generator=g), dim=-1)
    s_scale, t_scale = torch.tensor(9.0), torch.tensor(40.0)

    ref_contrastive, ref_distill = DistillClipLoss()(s_img, s_txt, s_scale, t_img, t_txt, t_scale)
    ref_grad = torch.autograd.grad(ref_distill, s_img)[0]

    mean = DistillationLoss(LossConfig(affinity=1.0, affinity_reduction="mean"), student_dim, teacher_dim)
    out = mean(s_img, s_txt, t_img, t_txt, s_scale, t_scale)
    assert out["loss"].item() == pytest.approx(ref_distill.item(), rel=1e-6)
    assert torch.allclose(torch.autograd.grad(out["loss"], s_img)[0], ref_grad, atol=1e-6)

    summed = DistillationLoss(LossConfig(affinity=1.0), student_dim, teacher_dim)
    assert summed(s_img, s_txt, t_img, t_txt, s_scale, t_scale)["loss"].item() == \
        pytest.approx(2 * ref_distill.item(), rel=1e-6)

    both = DistillationLoss(LossConfig.from_mode("contrastive+affinity"), student_dim, teacher_dim)
    out = both(s_img, s_txt, t_img, t_txt, s_scale, t_scale)
    assert out["contrastive"].item() == pytest.approx(ref_contrastive.item(), rel=1e-6)
    assert out["contrastive"].item() == pytest.approx(ClipLoss()(s_img, s_txt, s_scale).item(), rel=1e-6)


# -- 3. fixed logit scale, presets, validation -------------------------------------------------------------

def test_fixed_logit_scale_overrides_both_scales():
    cfg = LossConfig(contrastive=1.0, affinity=1.0, image_image=1.0, fixed_logit_scale=50.0)
    s_scale = torch.tensor(S_SCALE, requires_grad=True)
    loss = DistillationLoss(cfg, 2, 2)
    s_img = t(S_IMG).requires_grad_()
    out = loss(s_img, t(S_TXT), t(T_IMG), t(T_TXT), s_scale, torch.tensor(T_SCALE))
    # the same as passing 50 for both models with no fixed scale
    own = run(LossConfig(contrastive=1.0, affinity=1.0, image_image=1.0), s_scale=50.0, t_scale=50.0)
    for key in own:
        assert out[key].item() == pytest.approx(own[key].item(), rel=1e-6)
    i2t = loop_soft_ce(loop_logits(50.0, S_IMG, S_TXT), loop_logits(50.0, T_IMG, T_TXT))
    assert out["affinity_i2t"].item() == pytest.approx(i2t, rel=1e-5)
    # ~5e-4 at scale 50: float32 rounding of the logits limits the relative agreement
    assert out["contrastive"].item() == pytest.approx(loop_infonce(50.0, S_IMG, S_TXT), rel=1e-4)
    assert out["affinity_i2t"].item() != pytest.approx(run(LossConfig())["affinity_i2t"].item(), rel=1e-3)
    out["loss"].backward()
    assert s_img.grad is not None and s_scale.grad is None  # the student's own scale is not used


def test_teacher_scale_may_be_none_with_fixed_scale():
    cfg = LossConfig(affinity=1.0, fixed_logit_scale=50.0)
    out = DistillationLoss(cfg, 2, 2)(t(S_IMG), t(S_TXT), t(T_IMG), t(T_TXT), None, None)
    assert torch.isfinite(out["loss"])


@pytest.mark.parametrize("mode, expected", [
    ("contrastive", {"contrastive": 1.0}),
    ("affinity", {"affinity_i2t": 1.0, "affinity_t2i": 1.0}),
    ("contrastive+affinity", {"contrastive": 1.0, "affinity_i2t": 1.0, "affinity_t2i": 1.0}),
    ("i2t", {"affinity_i2t": 1.0}),
    ("t2i", {"affinity_t2i": 1.0}),
    ("feature", {"feature": 1.0}),
    ("image_image", {"image_image": 1.0}),
    ("text_text", {"text_text": 1.0}),
    ("image_image+text_text", {"image_image": 1.0, "text_text": 1.0}),
])
def test_from_mode_presets(mode, expected):
    cfg = LossConfig.from_mode(mode)
    assert cfg.term_weights() == expected
    assert cfg.needs_teacher == (mode != "contrastive")


def test_c1_modes_all_build_and_overrides_apply():
    assert len({repr(LossConfig.from_mode(m).term_weights()) for m in C1_MODES}) == len(C1_MODES)  # all distinct
    cfg = LossConfig.from_mode("affinity", affinity_reduction="mean", fixed_logit_scale=50)
    assert cfg.term_weights() == {"affinity_i2t": 0.5, "affinity_t2i": 0.5}
    assert cfg.fixed_logit_scale == 50.0 and isinstance(cfg.fixed_logit_scale, float)
    assert LossConfig.from_mode("contrastive+affinity", contrastive=0.25).term_weights()["contrastive"] == 0.25
    with pytest.raises(TinyCLIPError, match="unknown"):
        LossConfig.from_mode("affinity+kd")
    with pytest.raises(TinyCLIPError, match="unknown loss option"):
        LossConfig.from_mode("affinity", temperature=0.02)


def test_from_dict_accepts_recipe_values():
    cfg = LossConfig.from_dict({"contrastive": 1, "affinity": 1, "affinity_reduction": "mean",
                                "fixed_logit_scale": 50})
    assert cfg == LossConfig(contrastive=1.0, affinity=1.0, affinity_reduction="mean", fixed_logit_scale=50.0)
    assert LossConfig.from_dict({}) == LossConfig()
    assert LossConfig.from_dict({"mode": "i2t", "fixed_logit_scale": 50}).term_weights() == {"affinity_i2t": 1.0}


@pytest.mark.parametrize("bad, match", [
    ({"afinity": 1.0}, "unknown loss option"),
    ({"affinity": -1.0}, "affinity=-1.0"),
    ({"feature": -0.5}, "feature"),
    ({"contrastive": float("nan")}, "contrastive"),
    ({"contrastive": "1"}, "contrastive"),
    ({"image_image": True}, "image_image"),
    ({"affinity_i2t": -1.0}, "affinity_i2t"),
    ({"affinity_reduction": "max"}, "affinity_reduction"),
    ({"fixed_logit_scale": 0}, "fixed_logit_scale"),
    ({"fixed_logit_scale": -50.0}, "fixed_logit_scale"),
    ({"affinity": 0.0}, "every loss weight is 0"),
    ({"mode": "distill"}, "unknown"),
])
def test_from_dict_rejects_bad_values(bad, match):
    with pytest.raises(TinyCLIPError, match=match):
        LossConfig.from_dict(bad)


def test_from_dict_rejects_non_mapping():
    with pytest.raises(TinyCLIPError, match="mapping"):
        LossConfig.from_dict(["affinity"])


# -- 4. dims, projection, bad inputs --------------------------------------------------------------------------

def test_projection_only_when_dims_differ_and_feature_on():
    feature = LossConfig(affinity=1.0, feature=1.0)
    assert DistillationLoss(feature, 64, 64).feature_proj is None
    assert list(DistillationLoss(feature, 64, 64).parameters()) == []
    different = DistillationLoss(feature, 1024, 512)
    assert tuple(different.feature_proj.weight.shape) == (512, 1024)
    assert [p.shape for p in different.parameters()] == [torch.Size([512, 1024])]
    assert DistillationLoss(LossConfig(affinity=1.0), 1024, 512).feature_proj is None


def test_different_dims_all_terms_backprop():
    g = torch.Generator().manual_seed(3)
    s_img = F.normalize(torch.randn(4, 6, generator=g), dim=-1).requires_grad_()
    s_txt = F.normalize(torch.randn(4, 6, generator=g), dim=-1).requires_grad_()
    t_img = F.normalize(torch.randn(4, 3, generator=g), dim=-1)
    t_txt = F.normalize(torch.randn(4, 3, generator=g), dim=-1).requires_grad_()  # must not receive gradient
    cfg = LossConfig(contrastive=1.0, affinity=1.0, feature=1.0, image_image=1.0, text_text=1.0)
    loss = DistillationLoss(cfg, 6, 3)
    out = loss(s_img, s_txt, t_img, t_txt, torch.tensor(20.0), torch.tensor(50.0))
    assert set(out) == {"loss", "contrastive", "affinity_i2t", "affinity_t2i", "feature", "image_image", "text_text"}
    out["loss"].backward()
    assert s_img.grad.abs().sum() > 0 and s_txt.grad.abs().sum() > 0
    assert loss.feature_proj.weight.grad.abs().sum() > 0
    assert t_txt.grad is None


def test_bad_inputs_raise_tinyclip_error():
    loss = DistillationLoss(LossConfig(affinity=1.0), 2, 3)
    with pytest.raises(TinyCLIPError, match="teacher_dim"):
        loss(t(S_IMG), t(S_TXT), t(T_IMG), t(T_TXT), torch.tensor(1.0), torch.tensor(1.0))  # teacher is 2-d
    with pytest.raises(TinyCLIPError, match="student_dim"):
        DistillationLoss(LossConfig(affinity=1.0), 3, 2)(t(S_IMG), t(S_TXT), t(T_IMG), t(T_TXT),
                                                          torch.tensor(1.0), torch.tensor(1.0))
    with pytest.raises(TinyCLIPError, match="teacher_image is None"):
        loss(t(S_IMG), t(S_TXT), None, None, torch.tensor(1.0), torch.tensor(1.0))
    with pytest.raises(TinyCLIPError, match="rows"):
        DistillationLoss(LossConfig(affinity=1.0), 2, 2)(t(S_IMG), t(S_TXT[:2]), t(T_IMG), t(T_TXT),
                                                          torch.tensor(1.0), torch.tensor(1.0))
    with pytest.raises(TinyCLIPError, match="teacher_logit_scale"):
        DistillationLoss(LossConfig(affinity=1.0), 2, 2)(t(S_IMG), t(S_TXT), t(T_IMG), t(T_TXT),
                                                          torch.tensor(1.0), None)
    with pytest.raises(TinyCLIPError, match="not initialised"):
        DistillationLoss(LossConfig(affinity=1.0), 2, 2, rank=0, world_size=2)(
            t(S_IMG), t(S_TXT), t(T_IMG), t(T_TXT), torch.tensor(1.0), torch.tensor(1.0))
    with pytest.raises(TinyCLIPError, match="student_dim"):
        DistillationLoss(LossConfig(), 0, 512)
    with pytest.raises(TinyCLIPError, match="rank"):
        DistillationLoss(LossConfig(), 2, 2, rank=2, world_size=2)


def test_autocast_does_not_lower_precision():
    cfg = LossConfig(affinity=1.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = run(cfg)
    assert out["loss"].dtype == torch.float32
    assert out["loss"].item() == pytest.approx(run(cfg)["loss"].item(), rel=1e-6)


def test_works_on_open_clip_model_outputs():
    import open_clip
    import tinyclip  # noqa: F401  (registers the smoke configs)

    torch.manual_seed(0)
    teacher = open_clip.create_model("TinyCLIP-smoke-teacher").eval()
    student = open_clip.create_model("TinyCLIP-smoke-S50")
    images = torch.randn(3, 3, 32, 32)
    texts = torch.randint(1, 1000, (3, 16))
    s_img, s_txt, s_scale = student(images, texts)[:3]
    with torch.no_grad():
        t_img, t_txt, t_scale = teacher(images, texts)[:3]
    loss = DistillationLoss(LossConfig.from_mode("contrastive+affinity"), 64, 64)
    out = loss(s_img, s_txt, t_img, t_txt, s_scale, t_scale)
    out["loss"].backward()
    assert student.logit_scale.grad is not None and student.visual.conv1.weight.grad.abs().sum() > 0
    assert s_scale.item() == pytest.approx(1 / 0.07, rel=1e-5)  # exponentiated, as the loss expects


# -- 5. two processes (torchrun, gloo) == one process on the global batch -----------------------------------

def _load_worker():
    spec = importlib.util.spec_from_file_location("ddp_loss_worker", TESTS / "ddp_loss_worker.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_torchrun_equals_one_process(tmp_path):
    """Each of 2 ranks runs the loss on its half of the global batch inside DDP (gather_with_grad=True).

    Compared with a one-process run on the full batch:
    * gradients: DDP's averaged gradient on every rank equals the one-process gradient. With local_loss=False
      each rank computes the full global loss L, and all_gather's backward sums the N ranks' gradients
      (N·dL/dx_r), which DDP's 1/N average cancels. With local_loss=True rank r computes L_r over its own rows
      with L = (1/N)·sum_r L_r; the backward sum gives sum_k dL_k/dx_r and DDP's 1/N makes it dL/dx_r.
    * values: with local_loss=False every rank's value (and each term) equals the one-process value; with
      local_loss=True the mean over ranks does (equal local batches).
    """
    worker = _load_worker()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), str(TESTS / "ddp_loss_worker.py"), "--out", str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore::FutureWarning"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]

    for local_loss in (False, True):
        reference = worker.step(worker.build(local_loss, rank=0, world_size=1), worker.global_batch())
        per_rank = [r[local_loss] for r in ranks]
        for key, expected in reference["values"].items():
            values = [r["values"][key] for r in per_rank]
            assert np.mean(values) == pytest.approx(expected, rel=1e-5, abs=1e-5), (local_loss, key)
            if not local_loss:
                assert values == pytest.approx([expected] * 2, rel=1e-5, abs=1e-5), key
        if local_loss:  # each rank really saw only its rows
            assert per_rank[0]["values"]["loss"] != pytest.approx(per_rank[1]["values"]["loss"], rel=1e-3)
        assert set(reference["grads"]) == {"loss.feature_proj.weight", "student.image.weight", "student.image.bias",
                                           "student.text.weight", "student.text.bias", "student.logit_scale"}
        for name, expected in reference["grads"].items():
            assert expected.abs().sum() > 0, name
            for r in per_rank:
                torch.testing.assert_close(r["grads"][name], expected, rtol=1e-5, atol=1e-5,
                                           msg=lambda m: f"local_loss={local_loss} {name}: {m}")
