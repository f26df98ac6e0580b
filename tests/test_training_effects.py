"""Tests that a broken trainer would fail: the auto stage's distillation after the prune really trains (weights
move, the loss on one fixed batch falls), a run resumed from the checkpoint written right after the prune ends
exactly like an uninterrupted one, and the teacher-embedding cache equals the uncached run with augmentation and
fixed views (the riskiest case: a stored row must be the view that the step draws)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file

from tinyclip.pruned import WEIGHTS_FILE, PrunedCLIP, PrunedConfig, load_pruned
from tinyclip.recipe import load_recipe, resolve_recipe
from tinyclip.runner import _data_source, load_model, run_recipe

MASK_STEPS, STEPS = 12, 30


def _auto_recipe(folder: Path, env: Path) -> Path:
    raw = {"name": "effects-auto", "seed": 0,
           "teacher": {"model": "TinyCLIP-smoke-teacher", "weights": str(env / "teacher.pt")},
           "defaults": {"kind": "auto", "student": "TinyCLIP-smoke-teacher", "data": {"profile": "smoke",
                                                                                      "augment": False},
                        "batch": 32, "lr": 2e-3, "warmup": MASK_STEPS, "log_every": 1,
                        "checkpoint_every": MASK_STEPS,   # the checkpoint at the prune step: right after the prune
                        "eval": {"tasks": ["tux"], "max_items": 32}},
           "stages": [{"name": "A75", "init": "teacher", "steps": STEPS,
                       "auto": {"target_sparsity": 0.25, "mask_steps": MASK_STEPS, "mask_lr": 0.3,
                                "lagrangian_lr": 0.3, "sparsity_warmup": 4}}]}
    path = folder / "auto.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


class _Crash(Exception):
    """Stands for a kill right after the checkpoint written at the prune."""


@pytest.fixture(scope="module")
def auto_runs(env, tmp_path_factory):
    """One uninterrupted auto stage (its post-prune checkpoint kept aside), and one crashed right after that
    checkpoint and resumed."""
    folder = tmp_path_factory.mktemp("effects")
    path = _auto_recipe(folder, env)
    kept = folder / "post_prune.pt"
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TINYCLIP_RUNS_ROOT", str(folder / "uninterrupted"))
        recipe = load_recipe(path)
        run_dir = folder / "uninterrupted" / __import__("tinyclip.runs", fromlist=["config_hash"]).config_hash(
            resolve_recipe(recipe)[0])

        def keep(step: int, record: dict) -> None:
            if step == MASK_STEPS - 1:   # on_step runs after the step's checkpoint is written
                shutil.copy(run_dir / "checkpoints" / "last.pt", kept)

        (out["uninterrupted"],) = run_recipe(recipe, on_step=keep)
        mp.setenv("TINYCLIP_RUNS_ROOT", str(folder / "resumed"))

        def crash(step: int, record: dict) -> None:
            if step == MASK_STEPS - 1:
                raise _Crash

        with pytest.raises(_Crash):
            run_recipe(recipe, on_step=crash)
        (out["resumed"],) = run_recipe(recipe, resume=True)
    out["post_prune"] = torch.load(kept, weights_only=False)
    out["recipe"] = recipe
    return out


def test_resume_from_the_checkpoint_written_right_after_the_prune_is_exact(auto_runs):
    state = auto_runs["post_prune"]
    assert state["step"] == MASK_STEPS and "auto_report" in state and "mask_optimizer" not in state
    a, b = auto_runs["uninterrupted"], auto_runs["resumed"]
    assert not b["reused"] and a["metrics"] == b["metrics"] and a["train"] == b["train"]
    wa, wb = load_file(str(Path(a["model_dir"]) / WEIGHTS_FILE)), load_file(str(Path(b["model_dir"]) / WEIGHTS_FILE))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def _affinity_loss(student: torch.nn.Module, teacher: torch.nn.Module, images, tokens) -> float:
    """L_I2T + L_T2I at logit scale 50 (the stage's loss) on one batch."""
    with torch.no_grad():
        si, st = F.normalize(student.encode_image(images), dim=-1), F.normalize(student.encode_text(tokens), dim=-1)
        ti, tt = F.normalize(teacher.encode_image(images), dim=-1), F.normalize(teacher.encode_text(tokens), dim=-1)
        s, t = 50 * si @ st.T, 50 * ti @ tt.T
        return float(F.cross_entropy(s, t.softmax(1)) + F.cross_entropy(s.T, t.T.softmax(1)))


def test_distillation_after_the_prune_moves_the_weights_and_lowers_the_loss_on_a_fixed_batch(auto_runs, env):
    state = auto_runs["post_prune"]
    pruned = PrunedCLIP(PrunedConfig.from_dict(state["auto_report"]["config"]))
    pruned.load_state_dict(state["student"])
    final = load_pruned(auto_runs["uninterrupted"]["model_dir"])
    before, after = pruned.state_dict(), final.state_dict()
    assert before.keys() == after.keys()
    moved = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(moved) > len(before) // 2, f"only {len(moved)} of {len(before)} tensors changed after the prune"

    teacher = load_model("TinyCLIP-smoke-teacher", None)
    teacher.load_state_dict(torch.load(env / "teacher.pt"))
    teacher.eval(), pruned.eval(), final.eval()
    recipe = auto_runs["recipe"]
    import open_clip

    config = resolve_recipe(recipe)[0]
    data = _data_source(recipe.stages[0], config, open_clip.get_tokenizer("TinyCLIP-smoke-teacher"),
                        open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD)
    images, tokens, _ = data.batch(step=10_000, batch_size=64, seed=123)   # a batch the run never drew
    assert _affinity_loss(final, teacher, images, tokens) < _affinity_loss(pruned, teacher, images, tokens)


def _cache_recipe(folder: Path, env: Path, cache: bool) -> Path:
    raw = {"name": f"cache-{cache}", "seed": 0,
           "teacher": {"model": "TinyCLIP-smoke-teacher", "weights": str(env / "teacher.pt")},
           "defaults": {"data": {"profile": "smoke", "augment": True, "fixed_views": 2}, "teacher_cache": cache,
                        "batch": 16, "lr": 1e-3, "warmup": 2, "log_every": 1, "checkpoint_every": 100,
                        "eval": {"tasks": ["tux"], "max_items": 32}},
           "stages": [{"name": "S75", "student": "TinyCLIP-smoke-S75", "init": "teacher", "steps": 5},
                      {"name": "S50", "student": "TinyCLIP-smoke-S50", "init": "teacher", "steps": 9}]}
    path = folder / f"cache_{cache}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_teacher_cache_with_augmentation_and_fixed_views_equals_the_uncached_run(env, runs, tmp_path):
    plain = run_recipe(load_recipe(_cache_recipe(tmp_path, env, False)))
    cached = run_recipe(load_recipe(_cache_recipe(tmp_path, env, True)))
    # stage 2 draws the same (sample, view) pairs as stage 1 for its first 5 steps: those come from the cache
    assert [s["teacher_cache"]["misses"] for s in cached] == [5, 4]
    assert [s["teacher_cache"]["hits"] for s in cached] == [0, 5]
    for a, b in zip(plain, cached):
        wa = load_file(str(Path(a["model_dir"]) / "open_clip_model.safetensors"))
        wb = load_file(str(Path(b["model_dir"]) / "open_clip_model.safetensors"))
        # a stored row was computed in another batch than the one it serves: equal up to float rounding
        assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < 1e-6
        assert b["train"]["loss"] == pytest.approx(a["train"]["loss"], rel=1e-5)
    assert plain[0]["metrics"] == cached[0]["metrics"]   # stage 1 computes every embedding itself
