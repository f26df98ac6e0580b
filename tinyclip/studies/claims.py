"""The claims C1–C9 under test, their verdicts, and ``reports/claims.json``.

Each study computes its claims' entries (:func:`claim_entry`) from paired comparisons (:func:`compare`) and the
notebook stores them with :func:`record_claims`; ``reports/claims.json`` keeps one object per claim (``id``,
``claim``, ``verdict``, ``effect``, ``ci_low``, ``ci_high``, ``n_seeds``, ``metric``, ``notebook``,
``profile``, plus details), claims whose notebook has not run yet carry the verdict ``"not yet run"``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from .. import stats
from ..runs import atomic_write_json

NOT_YET_RUN = "not yet run"

# id: (the paper's claim, the notebook that tests it)
CLAIMS: dict[str, tuple[str, str]] = {
    "C1": ("Affinity mimicking (image→text + text→image) beats the other interaction modes (contrastive only, "
           "feature mimicking, image–image + text–text affinities, affinity + contrastive)", "ablation_affinity"),
    "C2": ("Weight inheritance beats random initialisation at the same training budget", "ablation_inheritance"),
    "C3": ("Automatic inheritance beats manual inheritance at the same size and budget", "ablation_inheritance"),
    "C4": ("The text tower is redundant in depth, the image tower in width", "redundancy"),
    "C5": ("A good teacher similar in architecture beats a stronger dissimilar one", "teacher_choice"),
    "C6": ("Multi-stage progressive compression beats single-stage at high sparsity", "multistage"),
    "C7": ("Inheritance reaches a given accuracy 1.4–7.8× sooner than training from scratch", "training_cost"),
    "C8": ("A 50 %-size student keeps accuracy comparable to its teacher (here: ≥ 95 % of the teacher's score)",
           "table2"),
    "C9": ("TinyCLIP architectures' parameter counts and MACs are as published", "table2"),
}


MIN_SEEDS = 3   # a verdict needs at least this many seeds; below it the comparison is shown but inconclusive


def compare(a: Mapping[int, Any], b: Mapping[int, Any], *, kind: str = "difference", threshold: float | None = None,
            claimed: str = "above", shared_b: bool = False, min_seeds: int = MIN_SEEDS) -> dict[str, Any]:
    """A paired comparison of two arms' per-item outcomes (seed → scores in [0, 1]) with its verdict: a difference
    in points (A − B, threshold 0 by default) or a ratio (A / B, threshold 1 by default). With fewer than
    ``min_seeds`` seeds in common the interval covers too little of the seed variance to carry a verdict: it is
    "inconclusive" whatever the interval says."""
    effect = stats.paired_effect(a, b, kind=kind, scale=100.0 if kind == "difference" else 1.0, shared_b=shared_b)
    threshold = (0.0 if kind == "difference" else 1.0) if threshold is None else threshold
    verdict = stats.verdict(effect.ci_low, effect.ci_high, threshold=threshold, claimed=claimed)
    if effect.n_seeds < min_seeds:
        verdict = stats.INCONCLUSIVE
    return {**effect.as_dict(), "threshold": threshold, "claimed": claimed, "verdict": verdict,
            "too_few_seeds": effect.n_seeds < min_seeds, "min_seeds": min_seeds}


def claim_entry(claim_id: str, *, verdict: str, comparison: Mapping[str, Any] | None, metric: str, profile: str,
                details: Sequence[Mapping[str, Any]] = (), note: str = "") -> dict[str, Any]:
    """One object of ``claims.json``; ``comparison`` (from :func:`compare`) is the headline effect."""
    text, notebook = CLAIMS[claim_id]
    head = comparison or {}
    return {"id": claim_id, "claim": text, "verdict": verdict, "effect": head.get("estimate"),
            "ci_low": head.get("ci_low"), "ci_high": head.get("ci_high"), "n_seeds": head.get("n_seeds"),
            "kind": head.get("kind"), "threshold": head.get("threshold"), "detectable": head.get("detectable"),
            "min_seeds": head.get("min_seeds", MIN_SEEDS),
            "metric": metric, "notebook": notebook, "profile": profile, "details": list(details), "note": note}


def claims_path(profile: str) -> Path:
    from ..report import reports_dir

    return reports_dir(profile) / "claims.json"


def load_claims(profile: str) -> list[dict[str, Any]]:
    """Every claim, in order: the recorded entry, or a ``"not yet run"`` placeholder."""
    path = claims_path(profile)
    recorded = {c["id"]: c for c in json.loads(path.read_text())} if path.is_file() else {}
    out = []
    for claim_id, (text, notebook) in CLAIMS.items():
        out.append(recorded.get(claim_id) or {
            "id": claim_id, "claim": text, "verdict": NOT_YET_RUN, "effect": None, "ci_low": None, "ci_high": None,
            "n_seeds": None, "metric": None, "notebook": notebook, "profile": profile, "details": [], "note": ""})
    return out


def record_claims(entries: Sequence[Mapping[str, Any]], profile: str) -> Path:
    """Store a notebook's claim entries in ``claims.json`` (the other claims are kept as they are)."""
    claims = {c["id"]: c for c in load_claims(profile)}
    for entry in entries:
        claims[entry["id"]] = dict(entry)
    path = claims_path(profile)
    atomic_write_json(path, [claims[c] for c in CLAIMS])
    return path


def verdict_sentence(entry: Mapping[str, Any], unit: str = "points") -> str:
    """The claim, the measured effect with its interval, and the verdict, as one markdown sentence."""
    if entry["verdict"] == NOT_YET_RUN or entry.get("effect") is None:
        return f"**{entry['id']}** — {entry['claim']}: **{entry['verdict']}**."
    if entry.get("ci_low") is None:  # a deterministic check (C9): no seeds, no interval; the note says what
        measured = f"{entry['effect']:.2f} (deterministic, no interval)"
    elif entry.get("kind") == "ratio":
        measured = f"ratio {entry['effect']:.3f} (95 % CI {entry['ci_low']:.3f} to {entry['ci_high']:.3f})"
    else:
        measured = f"{entry['effect']:+.2f} {unit} (95 % CI {entry['ci_low']:+.2f} to {entry['ci_high']:+.2f})"
    n = entry.get("n_seeds")
    seeds = f", {n} seed{'s' if n != 1 else ''}" if n else ""
    needed = entry.get("min_seeds") or MIN_SEEDS
    if n and n < needed:
        seeds += f" (fewer than the {needed} a verdict needs: inconclusive until the others finish)"
    detect = (f"; smallest detectable effect ±{entry['detectable']:.2f}" if entry.get("detectable") is not None
              and entry.get("kind") != "ratio" else "")
    return (f"**{entry['id']}** — {entry['claim']}. Measured on {entry['metric']}: {measured}{seeds}{detect}. "
            f"Verdict: **{entry['verdict']}**." + (f" {entry['note']}" if entry.get("note") else ""))
