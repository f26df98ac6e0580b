"""Claim C5 (paper §4, the teacher-choice ablation): a good teacher similar to the student in architecture beats a
stronger teacher unlike it. The paper's table was not available to the project (docs/sources.md §7), so only the
direction is tested, on this project's own runs.

The profile offers the natural pair of teachers: its own teacher (the mini teacher, an open_clip ViT of the
students' family, whose weights the students can inherit) and the LiT teacher (frozen EfficientNet-Lite0 and
all-MiniLM-L6-v2 towers with trained heads, :mod:`tinyclip.lit`; far stronger, and nothing like the students).
A 2 × 2 design on one student, S50 with the budget of ``recipes/<profile>_s50.yaml`` (156 steps at mini), on the
same seeds, data order, views and evaluation items:

================  =========================================  ==========================================
initialisation    mimics the profile's own teacher           mimics the LiT teacher
================  =========================================  ==========================================
inherited         ``inh_own``: ``<profile>_s50.yaml`` as is  ``inh_lit``: ``<profile>_s50_lit.yaml`` as is
                  (C1's affinity arm: its runs are shared)   (manual inheritance from the trained own
                                                             teacher's weights, ``init: {train: ...}``)
random            ``rand_own``: the same, ``init: random``   ``rand_lit``: the same, ``init: random``
================  =========================================  ==========================================

C5 is judged on ``inh_own − inh_lit`` (the similar teacher wins when the student inherits, as TinyCLIP's students
do); the verdict is that comparison's (reproduced when its 95 % interval lies above zero). Beside it, the main
effects and the interaction, each a paired contrast of arms (:data:`CONTRASTS`), test the paper's explanation:
inheritance needs a teacher similar to the student (the inheritance benefit is larger under the own teacher:
interaction > 0), and a stronger teacher is harder to mimic (even from random weights the own teacher wins).
Each teacher's own scores are reported beside the students'.

Caveats the notebook states: at mini scale the own teacher was itself distilled from the LiT teacher, so the
"similar teacher" is the stronger one's student; and the LiT teacher gives every augmented view of a sample the
embedding of its un-augmented image (its towers never see the augmentation), while the own teacher embeds each
view. ``family_teachers`` (optional, not trained by default) adds an inherited arm per further teacher of the
students' own family (a larger or a smaller one, ``recipes/<profile>_<name>.yaml`` training it).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import TinyCLIPError
from ..recipe import load_recipe
from .claims import MIN_SEEDS, claim_entry, compare
from .common import (METRICS, Arm, arm_outcomes, items_row, materialize, recipe_path, recipe_summaries, run_items,
                     score_rows, train_arms)

PRIMARY = "fmnist"
SCORED = ("fmnist", "retrieval", "tux", "openmoji")
COMPARED = ("fmnist", "retrieval")

# arm key: (initialisation, teacher mimicked): the 2 x 2 layout (teacher names filled in per profile)
LAYOUT = {"inh_own": ("inherited", "own"), "rand_own": ("random", "own"),
          "inh_lit": ("inherited", "lit"), "rand_lit": ("random", "lit")}

# name: (what it measures, side A, side B); a side is [(weight, arm key)], the effect mean(A) − mean(B) in points
Side = Sequence[tuple[float, str]]
CONTRASTS: dict[str, tuple[str, Side, Side]] = {
    "C5": ("similar vs stronger teacher, inherited students (the claim)", [(1, "inh_own")], [(1, "inh_lit")]),
    "teacher | random": ("similar vs stronger teacher, random-init students", [(1, "rand_own")],
                         [(1, "rand_lit")]),
    "teacher (main)": ("similar vs stronger teacher, averaged over initialisation",
                       [(0.5, "inh_own"), (0.5, "rand_own")], [(0.5, "inh_lit"), (0.5, "rand_lit")]),
    "inheritance | own": ("inheritance benefit under the similar teacher", [(1, "inh_own")], [(1, "rand_own")]),
    "inheritance | LiT": ("inheritance benefit under the LiT teacher", [(1, "inh_lit")], [(1, "rand_lit")]),
    "inheritance (main)": ("inheritance benefit, averaged over teachers", [(0.5, "inh_own"), (0.5, "inh_lit")],
                           [(0.5, "rand_own"), (0.5, "rand_lit")]),
    # (inh_own − rand_own) − (inh_lit − rand_lit), regrouped as two sides
    "interaction": ("inheritance benefit under the similar teacher minus under LiT",
                    [(1, "inh_own"), (1, "rand_lit")], [(1, "rand_own"), (1, "inh_lit")]),
}


def teacher_names(profile: str) -> dict[str, str]:
    return {"own": f"{profile} teacher", "lit": "LiT teacher"}


def arms(profile: str = "mini", *, budget_scale: float = 1.0, family_teachers: Sequence[str] = ()) -> list[Arm]:
    """The four arms of the 2 × 2 (and one inherited arm per optional family teacher)."""
    names = teacher_names(profile)
    own, lit = str(recipe_path(profile, "s50")), str(recipe_path(profile, "s50_lit"))
    stage = load_recipe(own).stages[-1].name
    if load_recipe(lit).stages[-1].name != stage:
        raise TinyCLIPError(f"recipes {own} and {lit} must name their S50 stage alike (got {stage!r})")
    random = {"*": {"init": "random"}}
    out = [Arm(key, f"{init}, mimics the {names[teacher]}", own if teacher == "own" else lit, stage,
               {} if init == "inherited" else random, budget_scale)
           for key, (init, teacher) in LAYOUT.items()]
    for name in family_teachers:  # a recipe that trains another teacher of the students' family
        path = recipe_path(profile, name)
        if load_recipe(path).teacher.kind == "lit":
            raise TinyCLIPError(f"family teacher {name!r}: {path} distils from LiT; name a recipe that trains a "
                                "teacher of the students' family")
        out.append(Arm(f"inh_{name}", f"inherited, mimics {name}", own, stage, {}, budget_scale,
                       teacher={"train": str(path)}))
    return out


def run(profile: str = "mini", seeds: Sequence[int] = (0, 1, 2), *, budget_scale: float = 1.0,
        family_teachers: Sequence[str] = (), parallel: int = 2, threads: int | None = None) -> None:
    """Train every arm on every seed (finished runs are reused; the own teacher first, the LiT teacher's
    embedding cache on first use)."""
    train_arms(arms(profile, budget_scale=budget_scale, family_teachers=family_teachers), seeds,
               parallel=parallel, threads=threads)


def combine_outcomes(side: Side, outcomes: Mapping[str, Mapping[int, np.ndarray]]) -> dict[int, np.ndarray]:
    """One side of a contrast as if it were one arm: per seed (those every arm of the side has), the weighted sum
    of the arms' per-item outcomes. Paired with the other side on the same seeds and items, the bootstrap of
    :func:`tinyclip.stats.paired_effect` then resamples the whole contrast at once."""
    parts = [(w, outcomes.get(key) or {}) for w, key in side]
    seeds = sorted(set.intersection(*(set(o) for _, o in parts))) if parts else []
    return {s: sum(w * np.asarray(o[s], dtype=np.float64) for w, o in parts) for s in seeds}


def side_name(side: Side) -> str:
    """``inh_own``, ``½(inh_own + rand_own)``, ``(inh_own + rand_lit)``: a side as text for tables and figures, in
    parentheses when it sums arms (the figures write "A − B")."""
    weights = {w for w, _ in side}
    keys = " + ".join(k for _, k in side)
    if len(side) == 1:
        return keys
    if weights == {1}:
        return f"({keys})"
    if len(weights) == 1:
        (w,) = weights
        return f"{'½' if w == 0.5 else f'{w:g} ×'}({keys})"
    return " + ".join(f"{w:g}·{k}" for w, k in side)


def contrasts(outcomes: Mapping[str, Mapping[int, np.ndarray]], metric: str,
              family_teachers: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Every contrast of :data:`CONTRASTS` (plus, per family teacher, its inherited arm against the two inherited
    arms of the 2 × 2) whose arms share a seed, as :func:`claims.compare` results."""
    table = dict(CONTRASTS)
    for name in family_teachers:
        key = f"inh_{name}"
        table[f"{name} vs LiT"] = (f"inherited students: {name} vs the LiT teacher", [(1, key)], [(1, "inh_lit")])
        table[f"{name} vs own"] = (f"inherited students: {name} vs the own teacher", [(1, key)], [(1, "inh_own")])
    out = []
    for name, (what, side_a, side_b) in table.items():
        a, b = combine_outcomes(side_a, outcomes), combine_outcomes(side_b, outcomes)
        if a and b and set(a) & set(b):
            out.append({"claim": name, "what": what, "a": side_name(side_a), "b": side_name(side_b),
                        "metric": metric, **compare(a, b)})
    return out


def trained_teacher_summary(arm: Arm) -> dict[str, Any] | None:
    """The finished run of the teacher an arm's recipe trains (``teacher: {train: ...}``), whatever the students'
    seeds; ``None`` until it has finished or when the arm's teacher is not trained by a recipe."""
    recipe = load_recipe(materialize(arm))
    if recipe.teacher.kind != "train":
        return None
    summaries = recipe_summaries(recipe.teacher.recipe)
    return summaries[-1] if summaries else None


def teacher_rows(profile: str, study: Sequence[Arm], metrics: Sequence[str] = SCORED) -> list[dict[str, Any]]:
    """Each teacher's own scores as rows beside the students': the own teacher (and each family teacher) from its
    run, the LiT teacher from its build (``–`` for any that is not there yet)."""
    from ..lit import teacher_eval_items

    names = teacher_names(profile)
    by_key = {a.key: a for a in study}
    rows = []
    sources = [("own_teacher", f"{names['own']} (the students' family)", by_key["inh_own"])]
    sources += [(f"{a.key[4:]}_teacher", f"{a.key[4:]} (the students' family)", a) for a in study
                if a.key not in LAYOUT]
    for key, label, arm in sources:
        summary = trained_teacher_summary(arm)
        rows.append({"arm": key, "label": label, "seeds": 0} if summary is None else
                    items_row(key, label, {0: run_items(summary)}, metrics,
                              params_m=summary["params"]["total"] / 1e6, train_min=summary.get("train_s", 0.0) / 60))
    spec = load_recipe(by_key["inh_lit"].recipe).teacher.lit or {}
    label = f"{names['lit']} (EfficientNet-Lite0 + MiniLM towers, trained heads)"
    try:
        lit = teacher_eval_items(spec["profile"], spec["image_size"])
        rows.append(items_row("lit_teacher", label, {0: lit["items"]}, metrics,
                              params_m=lit["params"]["total"] / 1e6))
    except TinyCLIPError:  # not built yet: the LiT arms have not started
        rows.append({"arm": "lit_teacher", "label": label, "seeds": 0})
    return rows


def layout(profile: str) -> dict[str, tuple[str, str]]:
    """:data:`LAYOUT` with the profile's teacher names, for :func:`views.two_way_table`."""
    names = teacher_names(profile)
    return {key: (init, f"mimics the {names[teacher]}") for key, (init, teacher) in LAYOUT.items()}


def analyse(profile: str = "mini", seeds: Sequence[int] = (0, 1, 2), *, budget_scale: float = 1.0,
            family_teachers: Sequence[str] = ()) -> dict[str, Any]:
    """Scores of the teachers and the students, every contrast on every compared metric, the C5 claim entry and
    the computed reading of the 2 × 2 (:func:`interpretation`)."""
    study = arms(profile, budget_scale=budget_scale, family_teachers=family_teachers)
    students = score_rows(study, seeds, metrics=SCORED)
    teachers = teacher_rows(profile, study)
    comparisons = []
    for metric in COMPARED:
        outcomes = {a.key: arm_outcomes(a, seeds, metric) for a in study}
        comparisons += contrasts(outcomes, metric, family_teachers)
    primary = {c["claim"]: c for c in comparisons if c["metric"] == PRIMARY}
    claims = []
    head = primary.get("C5")
    if head is not None:
        claims.append(claim_entry("C5", verdict=head["verdict"], comparison=head, metric=METRICS[PRIMARY],
                                  profile=profile, details=comparisons, note=_note(primary, teachers, profile)))
    return {"arms": study, "rows": teachers + students, "student_rows": students, "teacher_rows": teachers,
            "comparisons": comparisons, "claims": claims, "layout": layout(profile),
            "interpretation": interpretation(primary, teachers, profile)}


def _effect(c: Mapping[str, Any]) -> str:
    return f"{c['estimate']:+.2f} points (95 % CI {c['ci_low']:+.2f} to {c['ci_high']:+.2f})"


def _teacher_gap(teachers: Sequence[Mapping[str, Any]], profile: str) -> str:
    by_key = {r["arm"]: r for r in teachers if r.get("seeds")}
    own, lit = by_key.get("own_teacher"), by_key.get("lit_teacher")
    if own is None or lit is None:
        return ""
    gap = lit[PRIMARY] - own[PRIMARY]
    stronger = "the stronger teacher, as designed" if gap > 0 else "not the stronger teacher here"
    return (f"The LiT teacher scores {lit[PRIMARY]:.1f} % on Fashion-MNIST and the {profile} teacher "
            f"{own[PRIMARY]:.1f} % ({gap:+.1f} points): LiT is {stronger}.")


def _note(primary: Mapping[str, Mapping[str, Any]], teachers: Sequence[Mapping[str, Any]], profile: str) -> str:
    parts = [f"Inherited S50 mimicking the {profile} teacher minus the same student mimicking the LiT teacher."]
    gap = _teacher_gap(teachers, profile)
    if gap:
        parts.append(gap)
    if "interaction" in primary:
        parts.append(f"Interaction (inheritance benefit under the {profile} teacher minus under LiT): "
                     f"{_effect(primary['interaction'])}, {primary['interaction']['verdict']}.")
    return " ".join(parts)


def _reading(c: Mapping[str, Any], readings: Mapping[str, str]) -> str:
    """The sentence for a contrast's verdict; none while too few seeds have finished (the interval then covers too
    little of the seed variance to be read, whatever side of zero it lies on)."""
    if c.get("too_few_seeds"):
        return f"with {c['n_seeds']} seed(s) finished this is not read yet (a reading needs {MIN_SEEDS})"
    return readings[c["verdict"]]


def interpretation(primary: Mapping[str, Mapping[str, Any]], teachers: Sequence[Mapping[str, Any]],
                   profile: str) -> str:
    """What the 2 × 2 says about the paper's explanation, in sentences built from the measured contrasts (primary
    metric): the teachers' own gap; inheritance needs a similar teacher (the interaction); a stronger teacher is
    harder to mimic (the teacher effect on random-init students)."""
    own = f"{profile} teacher"
    out = []
    gap = _teacher_gap(teachers, profile)
    if gap:
        out.append(gap)
    head = primary.get("C5")
    if head is not None:
        side = {"reproduced": f"the inherited student learns more from the {own}",
                "not reproduced": "the inherited student learns more from the stronger LiT teacher",
                "inconclusive": "this design cannot tell which teacher the inherited student learns more from"}
        out.append(f"Headline (C5): inherited S50 mimicking the {own} minus mimicking LiT is {_effect(head)}: "
                   f"{_reading(head, side)}.")
    inter, own_gain, lit_gain = (primary.get(k) for k in ("interaction", "inheritance | own", "inheritance | LiT"))
    if inter is not None and own_gain is not None and lit_gain is not None:
        reading = {"reproduced": "the benefit of inheritance is larger with the similar teacher, as the explanation "
                                 "*inheritance needs a similar teacher* predicts",
                   "not reproduced": "the benefit of inheritance is smaller with the similar teacher, against the "
                                     "explanation *inheritance needs a similar teacher*",
                   "inconclusive": "the benefit of inheritance is not measurably different between the teachers, so "
                                   "the explanation *inheritance needs a similar teacher* is neither supported nor "
                                   "refuted here"}
        out.append(f"Inheritance gains {_effect(own_gain)} under the {own} and {_effect(lit_gain)} under LiT; "
                   f"the difference (interaction) is {_effect(inter)}: {_reading(inter, reading)}.")
    scratch = primary.get("teacher | random")
    if scratch is not None:
        reading = {"reproduced": f"even without inheritance the {own} is the easier teacher to learn from, as the "
                                 "explanation *a stronger teacher is harder to mimic* predicts",
                   "not reproduced": "without inheritance the stronger LiT teacher is the better one to mimic, so "
                                     "it is not harder to mimic at this budget; a similar teacher's edge, if any, "
                                     "comes through inheritance",
                   "inconclusive": "without inheritance neither teacher is measurably better to mimic"}
        out.append(f"Random-init students mimicking the {own} minus mimicking LiT: {_effect(scratch)}; "
                   f"{_reading(scratch, reading)}.")
    return " ".join(out) if out else "No reading yet: the arms of the 2 × 2 have not finished on a common seed."
