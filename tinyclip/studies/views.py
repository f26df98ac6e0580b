"""Tables and figures the claims notebooks share: plain headers, intervals written out, "–" for unknown cells,
error bars from the bootstrap intervals, and one axis per scale (classification and retrieval never share one)."""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import pandas as pd

from .claims import verdict_sentence
from .common import METRICS

DASH = "–"
SHORT = {"fmnist": "Fashion-MNIST top-1 (%)", "retrieval": "retrieval mean recall (%)",
         "tux": "Tux mean recall (%)", "openmoji": "OpenMoji mean recall (%)"}


def _num(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return DASH
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and abs(value) >= 1000):
        return f"{int(value):,}"
    return f"{value:.{digits}f}"


def with_interval(mean: float | None, ci: Sequence[float] | None, digits: int = 1, signed: bool = False) -> str:
    """``65.3 [64.8, 65.9]``; "–" when unknown."""
    if mean is None or ci is None:
        return DASH
    fmt = f"{{:+.{digits}f}}" if signed else f"{{:.{digits}f}}"
    return f"{fmt.format(mean)} [{fmt.format(ci[0])}, {fmt.format(ci[1])}]"


def scores_table(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str] = ("fmnist", "retrieval", "tux", "openmoji")
                 ) -> pd.DataFrame:
    """One line per arm: label, size, seeds, training minutes, each metric as mean [95 % interval]."""
    out = []
    for row in rows:
        line = {"Arm": row["label"], "Params (M)": _num(row.get("params_m"), 2), "Seeds": str(row.get("seeds", 0)),
                "Train (min / run)": _num(row.get("train_min"), 1)}
        for metric in metrics:
            line[SHORT[metric]] = with_interval(row.get(metric), row.get(f"{metric}_ci"))
        out.append(line)
    return pd.DataFrame(out).set_index("Arm")


def per_seed_table(rows: Sequence[Mapping[str, Any]], metric: str = "fmnist") -> pd.DataFrame:
    """Each arm's score per seed (the spread the intervals summarise)."""
    seeds = sorted({s for r in rows for s in (r.get(f"{metric}_per_seed") or {})})
    out = []
    for row in rows:
        values = row.get(f"{metric}_per_seed") or {}
        out.append({"Arm": row["label"], **{f"seed {s}": _num(values.get(s), 2) for s in seeds}})
    return pd.DataFrame(out).set_index("Arm")


def comparison_table(comparisons: Sequence[Mapping[str, Any]], labels: Mapping[str, str] | None = None
                     ) -> pd.DataFrame:
    """One line per paired comparison: A vs B, metric, effect [interval], smallest detectable effect, verdict."""
    labels = labels or {}
    out = []
    for c in comparisons:
        ratio = c["kind"] == "ratio"
        out.append({"Claim": c.get("claim", DASH), "Comparison": f"{labels.get(c['a'], c['a'])} vs "
                                                                  f"{labels.get(c['b'], c['b'])}",
                    "Metric": SHORT.get(c["metric"], c["metric"]),
                    ("Effect" if not ratio else "Ratio"): with_interval(c["estimate"], (c["ci_low"], c["ci_high"]),
                                                                        digits=3 if ratio else 2, signed=not ratio),
                    "Detectable (±)": DASH if ratio else _num(c["detectable"], 2),
                    "Seeds": str(c["n_seeds"]), "Verdict": c["verdict"]})
    return pd.DataFrame(out).fillna(DASH).set_index("Claim")


def score_figure(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str] = ("fmnist", "retrieval"), title: str = ""):
    """Each arm's mean with its 95 % interval as error bars, one panel (own axis) per metric."""
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r.get("seeds")]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 0.45 * len(rows) + 1.6), sharey=True)
    axes = [axes] if len(metrics) == 1 else list(axes)
    labels = [r["label"] for r in rows]
    for ax, metric in zip(axes, metrics):
        means = [r[metric] for r in rows]
        low = [r[metric] - r[f"{metric}_ci"][0] for r in rows]
        high = [r[f"{metric}_ci"][1] - r[metric] for r in rows]
        ax.errorbar(means, range(len(rows)), xerr=[low, high], fmt="o", capsize=3, color="#1f77b4")
        ax.set_yticks(range(len(rows)), labels)
        ax.set_xlabel(SHORT[metric])
        ax.grid(axis="x", alpha=0.3)
    axes[0].invert_yaxis()  # first row on top; once only: the panels share the y axis (twice would undo it)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def effect_figure(comparisons: Sequence[Mapping[str, Any]], labels: Mapping[str, str] | None = None, title: str = ""):
    """Paired effects (points) with their 95 % intervals against zero, one panel per metric."""
    import matplotlib.pyplot as plt

    labels = labels or {}
    metrics = list(dict.fromkeys(c["metric"] for c in comparisons if c["kind"] == "difference"))
    if not metrics:
        return None
    n = max(sum(c["metric"] == m for c in comparisons) for m in metrics)
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 0.45 * n + 1.6))
    axes = [axes] if len(metrics) == 1 else list(axes)
    colours = {"reproduced": "#2ca02c", "not reproduced": "#d62728", "inconclusive": "#7f7f7f"}
    for ax, metric in zip(axes, metrics):
        rows = [c for c in comparisons if c["metric"] == metric]
        for i, c in enumerate(rows):
            ax.errorbar([c["estimate"]], [i], xerr=[[c["estimate"] - c["ci_low"]], [c["ci_high"] - c["estimate"]]],
                        fmt="o", capsize=3, color=colours.get(c["verdict"], "black"))
        ax.axvline(0, color="black", lw=0.8)
        ax.set_yticks(range(len(rows)), [f"{labels.get(c['a'], c['a'])} − {labels.get(c['b'], c['b'])}" for c in rows])
        ax.invert_yaxis()
        ax.set_xlabel(f"effect on {SHORT[metric]} (points)")
        ax.grid(axis="x", alpha=0.3)
    if title:
        fig.suptitle(title + " (green: reproduced, red: not reproduced, grey: inconclusive)", fontsize=10)
    fig.tight_layout()
    return fig


def verdict_markdown(claims: Sequence[Mapping[str, Any]]) -> str:
    """The final cell: each claim, its measured effect with the interval, and the verdict (all computed)."""
    if not claims:
        return "No verdict yet: the arms of this study have not finished on a common seed."
    return "\n\n".join(verdict_sentence(c) for c in claims)


def metric_notes(metrics: Sequence[str] = ("fmnist", "retrieval")) -> str:
    return "\n".join(f"* **{SHORT[m]}** — {METRICS[m]}" for m in metrics)


def plain_table(rows: Sequence[Mapping[str, Any]], columns: Mapping[str, tuple[str, int | None]],
                index: str | None = None) -> pd.DataFrame:
    """``rows`` with the chosen ``columns`` ({key: (header, decimals)}; decimals None: text as is), numbers
    formatted (integers with thousands separators), unknown cells as "–"."""
    out = []
    for row in rows:
        line = {}
        for key, (header, digits) in columns.items():
            value = row.get(key)
            if digits is None or not isinstance(value, (int, float)) or isinstance(value, bool):
                line[header] = DASH if value is None or value == "" else str(value)
            else:
                line[header] = _num(value if digits else int(round(value)), digits)
        out.append(line)
    frame = pd.DataFrame(out)
    return frame.set_index(columns[index][0]) if index else frame


def speed_figure(rows: Sequence[Mapping[str, Any]], device: str = "cpu"):
    """MACs reduction next to the measured speed-up, per student architecture (grouped bars: no overlapping
    labels), on one axis since both are ratios to the same teacher."""
    import matplotlib.pyplot as plt
    import numpy as np

    students = [r for r in rows if r.get("built_by") != "teacher" and r.get("speedup_vs_teacher")]
    if not students:
        return None
    y = np.arange(len(students))
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(students) + 1.4))
    ax.barh(y - 0.2, [r["macs_ratio_vs_teacher"] for r in students], height=0.4, label="MACs reduction (×)")
    ax.barh(y + 0.2, [r["speedup_vs_teacher"] for r in students], height=0.4, label=f"measured speed-up on {device} (×)")
    ax.set_yticks(y, [f"{r['model'].replace('TinyCLIP-', '')} (from {r['teacher']})" for r in students], fontsize=8)
    ax.invert_yaxis()
    ax.axvline(1, color="black", lw=0.8)
    ax.set_xlabel("× relative to the family's teacher")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def two_way_table(rows: Sequence[Mapping[str, Any]], layout: Mapping[str, tuple[str, str]], metric: str = "fmnist"
                  ) -> pd.DataFrame:
    """A factorial design's cells: ``layout`` maps an arm key to its (row level, column level); each cell is the
    arm's mean [95 % interval] on ``metric`` ("–" until it has finished)."""
    by_key = {r["arm"]: r for r in rows}
    row_levels = list(dict.fromkeys(r for r, _ in layout.values()))
    col_levels = list(dict.fromkeys(c for _, c in layout.values()))
    cells = {level: {c: DASH for c in col_levels} for level in row_levels}
    for key, (r, c) in layout.items():
        row = by_key.get(key, {})
        cells[r][c] = with_interval(row.get(metric), row.get(f"{metric}_ci"))
    frame = pd.DataFrame.from_dict(cells, orient="index")[col_levels]
    frame.index.name = SHORT[metric]
    return frame


def interaction_figure(rows: Sequence[Mapping[str, Any]], layout: Mapping[str, tuple[str, str]],
                       metrics: Sequence[str] = ("fmnist", "retrieval"), title: str = ""):
    """A two-factor interaction plot: the row levels of ``layout`` along x, one line per column level, each point
    the arm's mean with its 95 % interval; parallel lines mean no interaction. One panel (own axis) per metric."""
    import matplotlib.pyplot as plt

    by_key = {r["arm"]: r for r in rows if r.get("seeds")}
    row_levels = list(dict.fromkeys(r for r, _ in layout.values()))
    col_levels = list(dict.fromkeys(c for _, c in layout.values()))
    if not by_key:
        return None
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.6 * len(metrics), 3.4))
    axes = [axes] if len(metrics) == 1 else list(axes)
    for ax, metric in zip(axes, metrics):
        for i, level in enumerate(col_levels):
            points = [(x, by_key[k]) for x, r in enumerate(row_levels) for k, (rr, c) in layout.items()
                      if rr == r and c == level and k in by_key]
            if not points:
                continue
            xs = [x + 0.04 * (i - (len(col_levels) - 1) / 2) for x, _ in points]  # side by side, not on top
            means = [p[metric] for _, p in points]
            err = [[p[metric] - p[f"{metric}_ci"][0] for _, p in points],
                   [p[f"{metric}_ci"][1] - p[metric] for _, p in points]]
            ax.errorbar(xs, means, yerr=err, marker="o", capsize=3, label=level)
        ax.set_xticks(range(len(row_levels)), row_levels)
        ax.set_ylabel(SHORT[metric])
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
