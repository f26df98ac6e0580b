"""Tests for tinyclip.train (paper §3.3 trainer): schedule, weight decay, resume, reuse, bad inputs, teacher cache,
torchrun (2 CPU processes, gloo), parallel arms. Every run is tiny: smoke models, a few steps, batch 16."""
from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tinyclip.cli import main as cli_main
from tinyclip.errors import TinyCLIPError
from tinyclip.export import WEIGHTS_NAME
from tinyclip.losses import DistillationLoss, LossConfig
from tinyclip.recipe import load_recipe
from tinyclip.jobs import run_many
from tinyclip.runner import load_model, run_recipe
from tinyclip.train import StudentWithLoss, cosine_lr, param_groups

ROOT = Path(__file__).resolve().parent.parent


def write_recipe(folder: Path, env: Path, **stage_changes) -> Path:
    """A tiny recipe: a fixed random smoke teacher (weights file) → S75 (6 steps, checkpoints every 3)."""
    stage = {"name": "S75", "student": "TinyCLIP-smoke-S75", "steps": 6, **stage_changes}
    raw = {"name": "tiny", "seed": 0,
           "teacher": {"model": "TinyCLIP-smoke-teacher", "weights": str(env / "teacher.pt")},
           "defaults": {"data": {"profile": "smoke", "augment": False}, "batch": 16, "lr": 1e-3, "warmup": 2,
                        "checkpoint_every": 3, "log_every": 1, "eval": {"tasks": ["tux"], "max_items": 32}},
           "stages": [stage]}
    path = folder / f"recipe-{abs(hash(json.dumps(stage_changes, sort_keys=True)))}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def weights(summary: dict) -> dict[str, torch.Tensor]:
    return load_file(Path(summary["model_dir"]) / WEIGHTS_NAME)


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


# ----------------------------------------------------------------------------------------------- pieces
def test_cosine_lr_matches_the_official_formula():
    # warm-up 3 of 11 steps, base 1: (s+1)/3, then ½(1 + cos(π·(s−3)/8))
    values = [cosine_lr(s, 1.0, 3, 11) for s in range(11)]
    assert values[:4] == pytest.approx([1 / 3, 2 / 3, 1.0, 1.0])
    assert values[7] == pytest.approx(0.5)
    assert values[10] == pytest.approx(0.5 * (1 + math.cos(7 * math.pi / 8)))  # 0.0380602
    assert cosine_lr(0, 2e-4, 0, 5) == pytest.approx(2e-4)


def test_weight_decay_only_on_matrices_that_are_not_norms_biases_or_scales():
    student = load_model("TinyCLIP-smoke-S50", None)
    loss = DistillationLoss(LossConfig.from_mode("feature"), student_dim=64, teacher_dim=32)
    model = StudentWithLoss(student, loss)
    plain, decay = param_groups(model, 0.2)
    assert plain["weight_decay"] == 0.0 and decay["weight_decay"] == 0.2
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert decayed == {n for n, p in model.named_parameters()
                       if p.ndim >= 2 and not any(x in n for x in ("bn", "ln", "bias", "logit_scale"))}
    for name in ("student.token_embedding.weight", "student.positional_embedding", "student.visual.proj",
                 "student.text_projection", "student.visual.conv1.weight", "loss.feature_proj.weight",
                 "student.transformer.resblocks.0.attn.in_proj_weight", "student.visual.positional_embedding"):
        assert name in decayed, name
    for name in ("student.logit_scale", "student.visual.class_embedding", "student.ln_final.weight",
                 "student.visual.transformer.resblocks.0.mlp.c_fc.bias"):
        assert name not in decayed and name in {names[id(p)] for p in plain["params"]}, name
    assert len(plain["params"]) + len(decayed) == len(list(model.parameters()))


# ----------------------------------------------------------------------------------------------- runs
class Interrupt(Exception):
    pass


def test_resume_is_exact_and_finished_runs_are_reused(env, runs, tmp_path, monkeypatch):
    recipe = load_recipe(write_recipe(tmp_path, env))
    full = run_recipe(recipe)[0]
    assert not full["reused"] and full["steps"] == 6 and set(full["metrics"]) == {"tux"}

    # the same run again is reused without a step; --force retrains
    steps = []
    again = run_recipe(recipe, on_step=lambda step, record: steps.append(step))[0]
    assert again["reused"] and steps == [] and again["metrics"] == full["metrics"]

    # interrupted after step 4 (the checkpoint holds 3 steps), in a second runs root
    monkeypatch.setenv("TINYCLIP_RUNS_ROOT", str(tmp_path / "runs-b"))

    def crash(step, record):
        if step == 4:
            raise Interrupt
    with pytest.raises(Interrupt):
        run_recipe(recipe, on_step=crash)
    from tinyclip.runs import Run
    from tinyclip.recipe import resolve_recipe
    victim = Run(resolve_recipe(recipe)[0])
    assert victim.has_checkpoint() and not victim.is_finished()
    assert [r["step"] for r in victim.read_metrics()] == [0, 1, 2, 3, 4]
    with pytest.raises(TinyCLIPError, match="interrupted; pass --resume"):
        run_recipe(recipe)
    resumed_steps = []
    resumed = run_recipe(recipe, resume=True, on_step=lambda step, record: resumed_steps.append(step))[0]
    assert resumed_steps == [3, 4, 5]
    assert resumed["metrics"] == full["metrics"] and resumed["train"] == full["train"]
    assert max_diff(weights(resumed), weights(full)) == 0.0
    timings = ("samples_per_s", "data_wait_s")
    strip = [{k: v for k, v in r.items() if k not in timings} for r in victim.read_metrics()]
    reference = Run(victim.config, root=runs)
    assert strip == [{k: v for k, v in r.items() if k not in timings} for r in reference.read_metrics()]
    assert not victim.has_checkpoint() and victim.is_finished()
    prov = victim.read_json("provenance.json")
    assert len(prov["attempts"]) == 1 and prov["seed"] == 0 and prov["device"] == "cpu"

    forced = []
    run_recipe(recipe, force=True, on_step=lambda step, record: forced.append(step))
    assert forced == list(range(6))


def test_teacher_cache_matches_the_uncached_run(env, runs, tmp_path):
    """Augmentation off, 2 fixed views per sample (a view fixes the caption). Stage 1 fills the cache on first
    sight; stage 2 (same seed, 3 more steps) finds the first 4 batches stored and computes the rest."""
    two_stages = [{"name": "S75", "student": "TinyCLIP-smoke-S75", "steps": 4},
                  {"name": "S50", "student": "TinyCLIP-smoke-S50", "init": "teacher", "steps": 7}]

    def recipe(cache: bool):
        path = write_recipe(tmp_path, env, teacher_cache=cache)
        raw = yaml.safe_load(path.read_text())
        raw["defaults"]["data"] = {"profile": "smoke", "augment": False, "fixed_views": 2}
        raw["stages"] = [{**s, "teacher_cache": cache} for s in two_stages]
        path.write_text(yaml.safe_dump(raw))
        return load_recipe(path)

    plain = run_recipe(recipe(False))
    cached = run_recipe(recipe(True))
    assert [s["teacher_cache"]["misses"] for s in cached] == [4, 3]
    assert [s["teacher_cache"]["hits"] for s in cached] == [0, 4]
    for a, b in zip(plain, cached):
        assert a["run"] != b["run"]  # the cache is part of the run identity
        # a stored row was computed in another batch than the one it is used in: equal up to float rounding
        assert max_diff(weights(a), weights(b)) < 1e-6
        assert b["train"]["loss"] == pytest.approx(a["train"]["loss"], rel=1e-6)
    assert plain[0]["metrics"] == cached[0]["metrics"]  # stage 1 computes every batch itself: identical


def test_fixed_views_with_augmentation_and_a_chain(env, runs, tmp_path):
    """Augmentation with 2 fixed views per sample can be cached; stage 2 inherits from stage 1 (the chain)."""
    path = write_recipe(tmp_path, env, steps=3, teacher_cache=True)
    raw = yaml.safe_load(path.read_text())
    raw["defaults"]["data"] = {"profile": "smoke", "augment": True, "fixed_views": 2}
    raw["stages"].append({"name": "S50", "student": "TinyCLIP-smoke-S50", "init": "previous", "steps": 3,
                          "teacher_cache": True})
    path.write_text(yaml.safe_dump(raw))
    only_first = run_recipe(load_recipe(path), stage="S75")  # --stage S75: stop after it
    assert [s["stage"] for s in only_first] == ["S75"]
    first, second = run_recipe(load_recipe(path))
    assert first["reused"] and not second["reused"]
    assert second["teacher_cache"]["hits"] == 3
    assert json.loads((Path(second["run_dir"]) / "config.json").read_text())["config"]["init"]["run"] == first["run"]


# ----------------------------------------------------------------------------------------------- bad input
def _bad(tmp_path, env, case):
    path = write_recipe(tmp_path, env)
    raw = yaml.safe_load(path.read_text())
    stage = raw["stages"][0]
    if case == "unknown model":
        stage["student"] = "TinyCLIP-no-such-model"
    elif case == "student larger than teacher":
        raw["teacher"] = {"model": "TinyCLIP-smoke-S50", "weights": None}
    elif case == "missing data":
        raw["defaults"]["data"] = {"root": str(tmp_path / "nowhere"), "augment": False}
    elif case == "missing checkpoint":
        raw["teacher"]["weights"] = str(tmp_path / "missing.pt")
    elif case == "sparsity outside [0, 1)":
        stage.update(kind="auto", student="TinyCLIP-smoke-teacher", auto={"target_sparsity": 1.5})
    elif case == "non-finite loss":
        state = torch.load(env / "teacher.pt")
        state["visual.proj"][0, 0] = float("nan")
        torch.save(state, tmp_path / "nan.pt")
        raw["teacher"]["weights"] = str(tmp_path / "nan.pt")
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("case, message", [
    ("unknown model", "unknown model 'TinyCLIP-no-such-model'"),
    ("student larger than teacher", "larger than its teacher"),
    ("missing data", "does not exist"),
    ("missing checkpoint", "missing.pt does not exist"),
    ("sparsity outside [0, 1)", r"target_sparsity must lie in \[0, 1\)"),
    ("non-finite loss", "holds non-finite values"),  # caught at the input check, before any step
])
def test_bad_inputs_stop_with_exit_code_2(env, runs, tmp_path, capsys, case, message):
    code = cli_main(["distill", "--recipe", str(_bad(tmp_path, env, case))])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error: ") and "\n" not in err, err
    assert __import__("re").search(message, err), err
    assert not list(runs.glob("*/FINISHED")) if runs.exists() else True


def test_train_teacher_refuses_a_distillation_recipe(env, runs, tmp_path, capsys):
    assert cli_main(["train-teacher", "--recipe", str(write_recipe(tmp_path, env))]) == 2
    assert "tinyclip distill" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------- processes
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_torchrun_two_processes_match_one_process(env, runs, tmp_path):
    """2 ranks (gloo) each take half of every global batch of 16; gathered features and averaged gradients give
    the one-process run's weights up to float summation order (not bit-exact: the ranks sum half-batch gradients
    and all-reduce them, one process sums the whole batch; measured 4e-6 after 3 steps, while one wrong-direction
    AdamW update would move weights by ~lr = 1e-3)."""
    path = write_recipe(tmp_path, env, steps=3, eval={"tasks": []})  # no evaluation: only the training matters
    single = run_recipe(load_recipe(path))[0]
    env_vars = {**os.environ, "TINYCLIP_RUNS_ROOT": str(tmp_path / "ddp"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "tinyclip", "distill", "--recipe", str(path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env_vars)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = json.loads(proc.stdout.strip().splitlines()[-1])[0]
    assert ddp["run"] != single["run"]  # world size is part of the identity
    assert max_diff(weights(ddp), weights(single)) < 5e-5
    assert ddp["train"]["loss"] == pytest.approx(single["train"]["loss"], rel=1e-5)


@pytest.mark.slow
def test_parallel_arms_equal_serial_runs(env, runs, tmp_path, monkeypatch):
    """Two seeds in two single-thread processes; each equals the serial single-thread run of its seed."""
    path = write_recipe(tmp_path, env, steps=3, eval={"tasks": []})
    results = run_many([path], seeds=[0, 1], parallel=2, threads=1)
    assert [r["returncode"] for r in results] == [0, 0], [r["error"] for r in results]
    assert results[0]["stages"][0]["run"] != results[1]["stages"][0]["run"]
    assert run_recipe(load_recipe(path, seed=1))[0]["reused"]  # the job wrote the very run a serial call asks for
    monkeypatch.setenv("TINYCLIP_RUNS_ROOT", str(tmp_path / "serial"))
    serial = run_recipe(load_recipe(path, seed=1))[0]
    assert not serial["reused"]
    assert max_diff(weights(results[1]["stages"][0]), weights(serial)) == 0.0


def test_streamed_webdataset_code_path(env, runs, tmp_path):
    """The paper profile's loader (webdataset shards, streamed), exercised on the smoke shards."""
    path = write_recipe(tmp_path, env, steps=2, eval={"tasks": []},
                        data={"profile": "smoke", "augment": True, "loader": "stream", "workers": 0})
    summary = run_recipe(load_recipe(path))[0]
    assert summary["steps"] == 2 and math.isfinite(summary["train"]["loss"])


def test_teacher_given_only_as_an_embedding_set(env, runs, tmp_path):
    """A teacher known only by its stored embeddings (the hook for an external teacher such as the LiT towers):
    contrastive training plus affinity mimicking equals the same run with the teacher model itself."""
    import open_clip

    from tinyclip.data import PairSource, TrainDataSpec
    from tinyclip.teacher_cache import TeacherEmbeddingCache, prefill

    teacher = load_model("TinyCLIP-smoke-teacher", str(env / "teacher.pt")).eval().requires_grad_(False)
    data = PairSource(TrainDataSpec(root=str(env / "smoke"), image_size=32, augment=False, fixed_views=2),
                      open_clip.get_tokenizer("TinyCLIP-smoke-teacher"), open_clip.OPENAI_DATASET_MEAN,
                      open_clip.OPENAI_DATASET_STD)
    cache = TeacherEmbeddingCache.create(tmp_path / "lit", ids=data.sample_ids(), dim=64,
                                         logit_scale=float(teacher.logit_scale.exp()), identity={"teacher": "test"})
    filled = prefill(cache, lambda i, t: (teacher.encode_image(i, normalize=True),
                                          teacher.encode_text(t, normalize=True)), data, batch_size=512)
    assert filled == len(data.sample_ids()) and cache.filled_count() == filled

    def run(teacher_spec):
        path = write_recipe(tmp_path, env, steps=3, init="random", student="TinyCLIP-smoke-S50",
                            loss="contrastive+affinity", logit_scale={"mode": "learned"}, eval={"tasks": []})
        raw = yaml.safe_load(path.read_text())
        raw["teacher"] = teacher_spec
        raw["defaults"]["data"] = {"profile": "smoke", "augment": False, "fixed_views": 2}
        path.write_text(yaml.safe_dump(raw))
        return run_recipe(load_recipe(path))[0]

    stored = run({"embeddings": str(tmp_path / "lit")})
    live = run({"model": "TinyCLIP-smoke-teacher", "weights": str(env / "teacher.pt")})
    assert stored["teacher_cache"]["hits"] == 3
    assert stored["train"]["loss_affinity_i2t"] > 0
    assert stored["train"]["loss"] == pytest.approx(live["train"]["loss"], rel=1e-5)
    assert max_diff(weights(stored), weights(live)) < 1e-5
    code = cli_main(["train-teacher", "--recipe", str(write_recipe(tmp_path, env))])
    assert code == 2  # a recipe with a teacher model is a distillation, not a teacher training


def test_smoke_driver_trains_the_teacher_then_the_chain(env, runs, tmp_path):
    """`tinyclip smoke`'s driver on a tiny copy of the smoke recipes: the teacher recipe runs first (contrastive,
    from scratch), the chain S75 → S50 is distilled from it, and the summary has the documented keys."""
    from tinyclip.commands import smoke

    teacher = yaml.safe_load((ROOT / "recipes" / "smoke_teacher.yaml").read_text())
    teacher["stages"][0].update(steps=3, warmup=1, eval={"tasks": ["tux"], "max_items": 16})
    (tmp_path / "teacher.yaml").write_text(yaml.safe_dump(teacher))
    chain = yaml.safe_load((ROOT / "recipes" / "smoke_manual.yaml").read_text())
    chain["teacher"] = {"train": "teacher.yaml"}
    chain["defaults"].update(warmup=1, eval={"tasks": ["tux"], "max_items": 16})
    for stage in chain["stages"]:
        stage["steps"] = 2
    (tmp_path / "chain.yaml").write_text(yaml.safe_dump(chain))

    out = smoke(tmp_path / "chain.yaml")
    assert set(out) == {"teacher", "students", "wall_s"}
    assert out["teacher"]["name"] == "TinyCLIP-smoke-teacher" and out["teacher"]["reused"]  # trained, then reused
    assert [s["name"] for s in out["students"]] == ["TinyCLIP-smoke-S75", "TinyCLIP-smoke-S50"]
    assert all(set(s["metrics"]) == {"tux"} and s["params"]["vision"] > 0 for s in out["students"])
    config = json.loads((runs / out["students"][1]["run"] / "config.json").read_text())["config"]
    assert config["teacher"] == {"kind": "run", "run": out["teacher"]["run"],
                                 "model_cfg": config["teacher"]["model_cfg"]}  # the original teacher, not S75
    assert config["init"]["run"] == out["students"][0]["run"]                 # stage 2 starts from stage 1
    metrics = [json.loads(line) for line in (runs / out["teacher"]["run"] / "metrics.jsonl").read_text().splitlines()]
    assert "loss_contrastive" in metrics[0] and "loss_affinity_i2t" not in metrics[0]


def test_lit_teacher_is_built_once_on_first_use(env, runs, tmp_path, monkeypatch):
    """``teacher: {lit: PROFILE}``: the LiT teacher's embedding cache is built when the first recipe needs it (here
    with toy towers instead of the pretrained ones), read per (sample, view), and reused afterwards."""
    from test_lit import toy_towers

    from tinyclip import lit

    calls = []
    real_build = lit.build_lit_teacher

    def toy_build(profile, **kw):
        calls.append(profile)
        return real_build(profile, towers=toy_towers(), config=lit.LiTConfig(embed_dim=64, image_size=kw["image_size"]),
                          heads=lit.HeadTrainingConfig(steps=20, batch_size=64, warmup=2, eval_every=10),
                          evaluate=False, **kw)

    monkeypatch.setattr(lit, "build_lit_teacher", toy_build)
    path = write_recipe(tmp_path, env, steps=3, init="random", student="TinyCLIP-smoke-S50", teacher_cache=True,
                        loss="contrastive+affinity", logit_scale={"mode": "learned"}, eval={"tasks": []})
    raw = yaml.safe_load(path.read_text())
    raw["teacher"] = {"lit": {"profile": "smoke", "image_size": 16}}
    raw["defaults"]["data"] = {"profile": "smoke", "augment": True, "fixed_views": 2}
    path.write_text(yaml.safe_dump(raw))
    first = run_recipe(load_recipe(path))[0]
    assert calls == ["smoke"] and any((runs / "lit").glob("smoke-16px*/teacher_cache_v2/meta.json"))
    assert first["teacher_cache"]["hits"] == 3 and first["train"]["loss_affinity_i2t"] > 0
    again = run_recipe(load_recipe(path))[0]
    assert again["reused"] and calls == ["smoke"]
    raw["stages"][0]["teacher_cache"] = False  # a LiT teacher exists only as per-view cached embeddings
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(TinyCLIPError, match="same data.fixed_views > 0"):
        run_recipe(load_recipe(path))
    raw["teacher"] = {"lit": "paper"}
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(TinyCLIPError, match="not 'paper'"):
        load_recipe(path)


def test_a_stage_inherits_another_recipes_final_student_while_distilling_from_lit(env, runs, tmp_path, monkeypatch):
    """``init: {train: RECIPE}`` (claim C5's inherited-LiT arm): the stage starts from manual inheritance of the other
    recipe's final student, which is trained first (then reused), while it mimics another teacher (a toy LiT)."""
    from test_lit import toy_towers

    from tinyclip import lit
    from tinyclip.export import load_open_clip_dir
    from tinyclip.inherit.manual import inherit_manual

    real_build = lit.build_lit_teacher
    monkeypatch.setattr(lit, "build_lit_teacher", lambda profile, **kw: real_build(
        profile, towers=toy_towers(), config=lit.LiTConfig(embed_dim=64, image_size=kw["image_size"]),
        heads=lit.HeadTrainingConfig(steps=20, batch_size=64, warmup=2, eval_every=10), evaluate=False, **kw))
    source = write_recipe(tmp_path, env, steps=3, eval={"tasks": []})   # S75 distilled from the smoke teacher
    # a learning rate of 1e-12: one step leaves the inherited weights as they were (to ~1e-12)
    path = write_recipe(tmp_path, env, steps=1, lr=1e-12, warmup=0, student="TinyCLIP-smoke-S50",
                        init={"train": source.name}, teacher_cache=True, eval={"tasks": []})
    raw = yaml.safe_load(path.read_text())
    raw["teacher"] = {"lit": {"profile": "smoke", "image_size": 16}}
    raw["defaults"]["data"] = {"profile": "smoke", "augment": True, "fixed_views": 2}
    path.write_text(yaml.safe_dump(raw))
    out = run_recipe(load_recipe(path))[0]
    src = run_recipe(load_recipe(source))[0]
    assert src["reused"]                                   # trained first, by the stage that needed it
    config = json.loads((Path(out["run_dir"]) / "config.json").read_text())["config"]
    assert config["init"] == {"from": "run", "run": src["run"], "inherit": {"depth_rule": "even", "width_rule": "leading"}}
    assert config["teacher"]["kind"] == "embeddings" and out["teacher_cache"]["hits"] == 1
    expected, _ = inherit_manual(load_open_clip_dir(src["model_dir"])[0], "TinyCLIP-smoke-S50")
    assert max_diff(weights(out), expected.state_dict()) < 1e-6
    assert run_recipe(load_recipe(path))[0]["reused"]


def test_init_from_a_run_is_checked_before_training(env, runs, tmp_path):
    from tinyclip.recipe import check_inputs

    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    for this, other in ((a, b), (b, a)):
        raw = yaml.safe_load(write_recipe(tmp_path, env, steps=1).read_text())
        raw["stages"][0]["init"] = {"train": other.name}
        this.write_text(yaml.safe_dump(raw))
    with pytest.raises(TinyCLIPError, match="leads back to .* \\(a cycle\\)"):
        check_inputs(load_recipe(a))
    auto = tmp_path / "auto.yaml"
    auto.write_text((ROOT / "recipes" / "smoke_auto.yaml").read_text().replace(
        "smoke_teacher.yaml", str(ROOT / "recipes" / "smoke_teacher.yaml")))
    raw = yaml.safe_load(a.read_text())
    raw["stages"][0]["init"] = {"train": str(auto)}
    a.write_text(yaml.safe_dump(raw))
    with pytest.raises(TinyCLIPError, match="ends in a pruned \\(auto\\) student"):
        check_inputs(load_recipe(a))
