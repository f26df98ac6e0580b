"""Claim C6 (paper §3.3): compressing in several stages beats compressing in one step at high sparsity.

Target: 25 % of the teacher's size. Each inheritance mode is run both ways, distilled from the same teacher by
affinity mimicking on the same seeds, data order and evaluation items:

* ``manual_chain`` — teacher → S75 → S50 → S25, each stage inheriting from the one before
  (``recipes/<profile>_multistage_chain.yaml``), scored at S25;
* ``manual_single`` — teacher → S25 in one stage (``<profile>_multistage_single.yaml``): the same final
  architecture (inherited straight from the teacher) with the chain's whole budget;
* ``auto_chain`` — teacher → A75 → A50 → A25 by learned masks (``<profile>_multistage_auto_chain.yaml``);
* ``auto_single`` — one auto stage pruning from 0 straight to the final target (``<profile>_multistage_auto_single.yaml``).

Design choices:

* **The 25 % students.** ``TinyCLIP-<profile>-S25`` keeps half the teacher's vision width and a quarter of its
  text depth, the way the S75 / S50 configs cut the image tower in width and the text tower in depth (paper
  §3.2; C4): mini 4 of 8 heads and 2 of 8 text layers, 26.0 % of the teacher under the paper's convention
  (vision complete, text without its token embedding); smoke 2 of 4 heads and 1 of 4 layers, 27.2 %.
* **Equal size.** Both auto arms take the manual S25's size as their target (sparsity ``1 − S25 / teacher``:
  mini 0.7400, smoke 0.7282), as the mini auto chain targets the manual S75 / S50 sizes, so all four arms aim at
  one size and the manual arms share one architecture. Where a learned mask lands is measured per run
  (:func:`allocations`); mini: the chain 0.740 on every seed, the single stage 0.735–0.747.
* **Equal budget.** A single stage trains for the sum of the chain's stage steps (mini 3 × 156 = 468 steps of 256
  pairs). An auto single stage also sums the chain's mask phases (mini 3 × 39 = 117 steps: the same 25 % of the
  stage) and target ramps (3 × 20 = 60 steps). Everything else is the recipe's: the same learning rate, the same
  warm-up rule (mini: 5 % of the stage, then one cosine; smoke: its fixed warm-up). Under ``budget_scale`` the
  single stage gets the scaled chain's sums, so the budgets stay equal after rounding.
* **Shared runs.** The chains' first two stages are ``<profile>_manual.yaml``'s and ``<profile>_auto.yaml``'s
  setting for setting (checked here: :func:`check_shared_stages`), so they resolve to the same runs as Table 2
  and C2 / C3 and are trained once. Arm overrides cannot add or remove stages, so the chains and the single
  stages are recipe files; every arm uses its file without overrides at ``budget_scale`` 1.
* **One teacher.** All four arms distil from the profile's teacher (``<profile>_teacher.yaml``), trained once;
  the intervals therefore do not cover the teacher's variance.

C6 is judged on ``chain − single`` on Fashion-MNIST prompted top-1 (retrieval mean recall is reported beside
it), paired on seeds and items, once for manual and once for automatic inheritance; the claim needs both
(:func:`tinyclip.stats.combine_verdicts`): reproduced when both intervals lie above zero, not reproduced when
either lies below, inconclusive otherwise. The learned allocation of the final automatic students
(:func:`tinyclip.pruned.pruned_architecture`) is shown next to the manual S25's fixed one.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from .. import stats, zoo
from ..errors import TinyCLIPError
from ..inherit.manual import select_layers
from ..pruned import pruned_architecture, to_pruned
from ..recipe import Recipe, load_recipe, teacher_recipe
from .claims import claim_entry, compare
from .common import (METRICS, Arm, allocation_columns, arm_outcomes, arm_summary, materialize, recipe_path,
                     recipe_summaries, score_rows, train_arms)

PRIMARY = "fmnist"
MODES = ("manual", "auto")
# mode: (chain recipe, single-stage recipe, the recipe whose stages the chain extends)
RECIPES = {"manual": ("multistage_chain", "multistage_single", "manual"),
           "auto": ("multistage_auto_chain", "multistage_auto_single", "auto")}


def check_shared_stages(chain: Recipe, base: Recipe) -> None:
    """The chain must begin with ``base``'s stages, setting for setting, under the same teacher and seed, so that
    those stages resolve to ``base``'s runs (which other studies train)."""
    head = chain.stages[:len(base.stages)]
    if chain.teacher != base.teacher or chain.seed != base.seed or head != base.stages:
        differs = next((s.name for s, b in zip(head, base.stages) if s != b), "teacher or seed")
        raise TinyCLIPError(f"recipe {chain.path} does not begin with the stages of {base.path} (first difference: "
                            f"{differs}); copy them unchanged so their runs are shared")


def check_single(single: Recipe, chain: Recipe) -> None:
    """The single stage must start from the chain's teacher and end where the chain ends: the same student
    (manual) or the same target size (auto)."""
    last = chain.stages[-1]
    if len(single.stages) != 1 or single.stages[0].init != "teacher" or single.teacher != chain.teacher:
        raise TinyCLIPError(f"recipe {single.path} must be one stage that inherits from {chain.path}'s teacher")
    stage = single.stages[0]
    if stage.kind != last.kind or stage.student != last.student:
        raise TinyCLIPError(f"recipe {single.path} must train a {last.kind} {last.student} like {chain.path}'s last "
                            f"stage, got a {stage.kind} {stage.student}")
    if stage.kind == "auto" and (stage.auto["target_sparsity"] != last.auto["target_sparsity"]
                                 or stage.auto["start_sparsity"] != 0.0):
        raise TinyCLIPError(f"recipe {single.path} must prune from sparsity 0 to {chain.path}'s final target "
                            f"{last.auto['target_sparsity']}")


def _budget(recipe: Recipe) -> dict[str, Any]:
    """What a single stage must get to match ``recipe``'s budget: the sums over its stages."""
    out: dict[str, Any] = {"steps": sum(s.steps for s in recipe.stages)}
    if recipe.stages[-1].kind == "auto":
        out["auto"] = {k: sum(s.auto[k] for s in recipe.stages) for k in ("mask_steps", "sparsity_warmup")}
    return out


def _single_arm(key: str, label: str, path: Path, chain_arm: Arm) -> Arm:
    single = load_recipe(path)
    chain = load_recipe(materialize(chain_arm))
    check_single(single, load_recipe(chain_arm.recipe))
    stage = single.stages[0]
    want = _budget(chain)
    own = {"steps": stage.steps, **({"auto": {k: stage.auto[k] for k in want["auto"]}} if "auto" in want else {})}
    # the file carries the chain's budget at scale 1; a scaled chain is matched exactly (no rounding drift)
    return Arm(key, label, str(path), stage.name, {} if own == want else {stage.name: want})


def arms(profile: str = "mini", *, budget_scale: float = 1.0) -> list[Arm]:
    """The four arms: for manual and for automatic inheritance, the chain to 25 % and the single stage."""
    out = []
    for mode in MODES:
        chain_name, single_name, base_name = RECIPES[mode]
        chain_path = recipe_path(profile, chain_name)
        chain = load_recipe(chain_path)
        check_shared_stages(chain, load_recipe(recipe_path(profile, base_name)))
        path = " → ".join(["teacher", *(s.name for s in chain.stages)])
        chain_arm = Arm(f"{mode}_chain", f"{mode}, chain {path}", str(chain_path), chain.stages[-1].name,
                        {}, budget_scale)
        out += [chain_arm, _single_arm(f"{mode}_single", f"{mode}, one stage teacher → {chain.stages[-1].name}",
                                       recipe_path(profile, single_name), chain_arm)]
    return out


def run(profile: str = "mini", seeds: Sequence[int] = (0, 1, 2), *, budget_scale: float = 1.0, parallel: int = 2,
        threads: int | None = None) -> None:
    """Train every arm on every seed (finished runs are reused)."""
    train_arms(arms(profile, budget_scale=budget_scale), seeds, parallel=parallel, threads=threads)


# ------------------------------------------------------------------------------------------------ design
def _final_size(stage: Any, teacher_params: int) -> int:
    if stage.kind == "auto":
        return round((1 - stage.auto["target_sparsity"]) * teacher_params)
    return zoo.count_params(zoo.build_shape_model(stage.student))["total"]


def design_rows(study: Sequence[Arm], seeds: Sequence[int] = ()) -> list[dict[str, Any]]:
    """One row per arm as it is trained: its stages with their steps (and mask steps), the total budget in steps
    and pairs, the final size as a share of the teacher, and the measured training minutes per seed summed over
    the stages (for the seeds that have finished)."""
    rows = []
    for arm in study:
        recipe = load_recipe(materialize(arm))
        teacher = zoo.count_params(zoo.build_shape_model(_teacher_model(recipe)))["total"]
        stages = [f"{s.name} {s.steps}" + (f" ({s.auto['mask_steps']} mask)" if s.kind == "auto" else "")
                  for s in recipe.stages]
        minutes = []
        for seed in seeds:
            done = recipe_summaries(materialize(arm), seed)
            if done is not None:
                minutes.append(sum(s.get("train_s", 0.0) for s in done if s["stage_name"] != "teacher") / 60)
        rows.append({"arm": arm.key, "label": arm.label, "stages": " → ".join(stages),
                     "steps": sum(s.steps for s in recipe.stages),
                     "pairs": sum(s.steps * s.batch for s in recipe.stages),
                     "mask_steps": sum(s.auto["mask_steps"] for s in recipe.stages if s.kind == "auto") or None,
                     "final_share": _final_size(recipe.stages[-1], teacher) / teacher,
                     "train_min": sum(minutes) / len(minutes) if minutes else None})
    return rows


def _teacher_model(recipe: Recipe) -> str:
    """The open_clip config of the teacher the recipe distils from (its teacher recipe's last student)."""
    if recipe.teacher.kind == "train":
        return teacher_recipe(recipe).stages[-1].student
    if recipe.teacher.kind == "model":
        return str(recipe.teacher.model)
    raise TinyCLIPError(f"recipe {recipe.path}: the study needs a teacher model (teacher: train or model), "
                        f"got {recipe.teacher.kind!r}")


# ------------------------------------------------------------------------------------------------ allocation
def manual_architecture(teacher: str, student: str, depth_rule: str = "even") -> dict[str, Any]:
    """A manual student as :func:`tinyclip.pruned.pruned_architecture` data against its teacher: per teacher
    layer the heads and FFN neurons it keeps (0 for the layers manual inheritance drops), so that it can be drawn
    beside the learned allocations."""
    config = to_pruned(zoo.build_shape_model(teacher)).config
    student_cfg = zoo.model_config(student)
    for name, cfg in (("vision", student_cfg["vision_cfg"]), ("text", student_cfg["text_cfg"])):
        tower = getattr(config, name)
        width = int(cfg["width"])
        heads = width // int(cfg["head_width"]) if name == "vision" else int(cfg["heads"])
        if width // heads != tower.head_dim:
            raise TinyCLIPError(f"{student}: {name} head width {width // heads} differs from {teacher}'s "
                                f"{tower.head_dim}; manual inheritance keeps the head width")
        mlp = int(width * cfg.get("mlp_ratio", 4.0))
        kept = set(select_layers(tower.layers, int(cfg["layers"]), depth_rule))
        tower.width = width
        tower.heads = [heads if i in kept else 0 for i in range(tower.layers)]
        tower.mlp = [mlp if i in kept else 0 for i in range(tower.layers)]
    return pruned_architecture(config)


def allocations(profile: str, seeds: Sequence[int], study: Sequence[Arm]) -> dict[str, list[dict[str, Any]]]:
    """arm key → the architecture of its final student per finished seed: the learned ones of the auto arms, and
    the manual S25's fixed one (once; it is the same for every seed and for both manual arms)."""
    out: dict[str, list[dict[str, Any]]] = {}
    manual = next(a for a in study if a.key == "manual_chain")
    recipe = load_recipe(manual.recipe)
    stage = recipe.stages[-1]
    out["manual"] = [manual_architecture(_teacher_model(recipe), stage.student, stage.inherit["depth_rule"])]
    for arm in study:
        if not arm.key.startswith("auto"):
            continue
        archs = []
        for seed in seeds:
            summary = arm_summary(arm, seed)
            if summary is not None:
                archs.append(summary.get("architecture") or pruned_architecture(Path(summary["run_dir"]) / "model"))
        out[arm.key] = archs
    return out


def allocation_rows(archs: Mapping[str, Sequence[Mapping[str, Any]]], teacher: Mapping[str, int],
                    labels: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """One row per final student: size, sparsity against the teacher, and per tower the share of the teacher's
    tower it keeps (``teacher``: the teacher's :func:`tinyclip.zoo.count_params`) plus :func:`allocation_columns`."""
    labels = labels or {}
    rows = []
    for key, entries in archs.items():
        for i, arch in enumerate(entries):
            row = {"arm": key, "label": labels.get(key, key) + (f", run {i + 1}" if len(entries) > 1 else ""),
                   "params_m": arch["params"] / 1e6, "sparsity": arch["sparsity"],
                   **{f"{t}_share": arch[t]["params"] / teacher[t] for t in ("vision", "text")}}
            rows.append({**row, **allocation_columns(arch)})
    return rows


# ------------------------------------------------------------------------------------------------ verdict
def c6_entry(comparisons: Sequence[Mapping[str, Any]], profile: str) -> dict[str, Any] | None:
    """The C6 claim entry from the chain − single comparisons: both modes must hold (a mode with no comparison
    counts as inconclusive); the headline is the less favourable mode."""
    primary = {c["mode"]: c for c in comparisons if c["metric"] == PRIMARY}
    if not primary:
        return None
    verdict = stats.combine_verdicts([primary[m]["verdict"] if m in primary else stats.INCONCLUSIVE for m in MODES])
    head = min(primary.values(), key=lambda c: c["estimate"])
    note = ("Multi-stage minus single-stage compression to 25 % of the teacher, same final size and budget; "
            f"headline: the less favourable inheritance mode ({head['mode']}); per mode: " +
            "; ".join(f"{m} {primary[m]['estimate']:+.2f} [{primary[m]['ci_low']:+.2f}, {primary[m]['ci_high']:+.2f}] "
                      f"{primary[m]['verdict']}" if m in primary else f"{m} not finished" for m in MODES) +
            ". Reproduced only if the chain wins for both.")
    return claim_entry("C6", verdict=verdict, comparison=head, metric=METRICS[PRIMARY], profile=profile,
                       details=list(comparisons), note=note)


def analyse(profile: str = "mini", seeds: Sequence[int] = (0, 1, 2), *, budget_scale: float = 1.0) -> dict[str, Any]:
    """Design, scores per arm (and the teacher), chain − single on every metric per inheritance mode, the learned
    allocations and the C6 claim entry (primary metric: Fashion-MNIST in-domain prompted top-1)."""
    study = arms(profile, budget_scale=budget_scale)
    by_key = {a.key: a for a in study}
    rows = score_rows(study, seeds, metrics=("fmnist", "retrieval", "tux", "openmoji"), teacher=study[0])
    comparisons = []
    for mode in MODES:
        for metric in ("fmnist", "retrieval"):
            oa = arm_outcomes(by_key[f"{mode}_chain"], seeds, metric)
            ob = arm_outcomes(by_key[f"{mode}_single"], seeds, metric)
            if oa and ob and set(oa) & set(ob):
                comparisons.append({"claim": "C6", "mode": mode, "a": f"{mode}_chain", "b": f"{mode}_single",
                                    "metric": metric, **compare(oa, ob)})
    entry = c6_entry(comparisons, profile)
    labels = {"manual": "manual S25 (fixed)", "auto_chain": "auto chain A25", "auto_single": "auto one-stage A25"}
    archs = allocations(profile, seeds, study)
    teacher = zoo.count_params(zoo.build_shape_model(_teacher_model(load_recipe(study[0].recipe))))
    return {"arms": study, "design": design_rows(study, seeds), "rows": rows, "comparisons": comparisons,
            "allocations": archs, "allocation_rows": allocation_rows(archs, teacher, labels),
            "allocation_labels": labels,
            "claims": [entry] if entry else []}
