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


# ------------------------------------------------------------------------------------------- redundancy (C4)
TOWER_NAMES = {"vision": "image tower", "text": "text tower"}


def similarity_figure(similarity: Mapping[str, Any], title: str = ""):
    """Linear CKA between layer outputs, one heat-map per tower (row / column 0 is the input to the first block)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(similarity), figsize=(5.2 * len(similarity), 4.4))
    for ax, (tower, matrix) in zip(axes, similarity.items()):
        im = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis")
        ticks = range(len(matrix))
        ax.set_xticks(ticks, ["in"] + [str(i + 1) for i in ticks][:-1])
        ax.set_yticks(ticks, ["in"] + [str(i + 1) for i in ticks][:-1])
        ax.set_xlabel("after block")
        ax.set_title(TOWER_NAMES[tower])
        for i in ticks:
            for j in ticks:
                ax.text(j, i, f"{matrix[i][j]:.2f}", ha="center", va="center", fontsize=6,
                        color="white" if matrix[i][j] < 0.6 else "black")
    fig.colorbar(im, ax=list(axes), shrink=0.8, label="linear CKA")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def single_layer_figure(single: Mapping[str, Sequence[Mapping[str, Any]]], metrics: Sequence[str], title: str = ""):
    """The cost (points lost, measurement half) of removing each block alone; one panel per metric."""
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 3.4))
    axes = [axes] if len(metrics) == 1 else list(axes)
    for ax, metric in zip(axes, metrics):
        for offset, (tower, rows) in zip((-0.2, 0.2), single.items()):
            x = np.arange(len(rows)) + 1
            ax.bar(x + offset, [r[f"{metric}_drop"] for r in rows], width=0.4, label=TOWER_NAMES[tower])
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xlabel("block removed")
        ax.set_ylabel(f"points lost, {SHORT[metric]}")
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def removal_figure(rows: Sequence[Mapping[str, Any]], base: Mapping[str, float], metrics: Sequence[str],
                   title: str = ""):
    """Score against block parameters removed, depth (least important blocks) against width (magnitude; random
    as the control, mean and range over seeds); rows of panels per metric, columns per tower."""
    import matplotlib.pyplot as plt
    import numpy as np

    towers = list(dict.fromkeys(r["tower"] for r in rows))
    fig, axes = plt.subplots(len(metrics), len(towers), figsize=(5.4 * len(towers), 3.3 * len(metrics)),
                             squeeze=False)
    styles = {"depth": ("o-", "#d62728"), "width": ("s-", "#1f77b4"), "width (random)": ("^--", "#7f7f7f")}
    for i, metric in enumerate(metrics):
        for j, tower in enumerate(towers):
            ax = axes[i][j]
            for kind, (fmt, colour) in styles.items():
                ks = sorted({r["k"] for r in rows if r["tower"] == tower and r["kind"] == kind})
                if not ks:
                    continue
                xs, ys, lo, hi = [], [], [], []
                for k in ks:
                    sel = [r for r in rows if r["tower"] == tower and r["kind"] == kind and r["k"] == k]
                    vals = np.array([r[metric] for r in sel])
                    xs.append(np.mean([r["params_removed_m"] for r in sel]))
                    ys.append(vals.mean())
                    lo.append(vals.mean() - vals.min())
                    hi.append(vals.max() - vals.mean())
                label = {"depth": "depth: least important blocks", "width": "width: lowest-magnitude heads + neurons",
                         "width (random)": "width: random (range over seeds)"}[kind]
                ax.errorbar(xs, ys, yerr=[lo, hi] if kind == "width (random)" else None, fmt=fmt, color=colour,
                            capsize=3, label=label)
            ax.axhline(base[metric], color="black", lw=0.8, ls=":", label="teacher")
            ax.set_title(TOWER_NAMES[tower], fontsize=10)
            ax.set_xlabel("block parameters removed (M)")
            ax.set_ylabel(SHORT[metric])
            ax.grid(alpha=0.3)
            if i == 0 and j == 0:
                ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def seed_allocation_figure(arch: Mapping[int, Mapping[str, Any]], title: str = ""):
    """Share of heads and FFN neurons the automatic chain kept in each layer, per tower, one marker per seed."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10.4, 3.4), sharey=True)
    markers = "os^Dv"
    for ax, tower in zip(axes, ("vision", "text")):
        for n, (seed, a) in enumerate(sorted(arch.items())):
            layers = a[tower]["layers"]
            x = [layer["layer"] + 1 for layer in layers]
            ax.plot(x, [100 * layer["heads"] / max(1, layer["heads_original"]) for layer in layers],
                    marker=markers[n % 5], color="#1f77b4", alpha=0.7, label=f"heads, seed {seed}")
            ax.plot(x, [100 * layer["mlp"] / max(1, layer["mlp_original"]) for layer in layers],
                    marker=markers[n % 5], color="#ff7f0e", alpha=0.7, ls="--", label=f"FFN neurons, seed {seed}")
        ax.set_title(f"{TOWER_NAMES[tower]} (hidden width kept: "
                     + ", ".join(f"{100 * a[tower]['hidden'] / a[tower]['hidden_original']:.0f} %"
                                 for _, a in sorted(arch.items())) + ")", fontsize=9)
        ax.set_xlabel("layer")
        ax.set_ylim(-5, 105)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("kept (%)")
    axes[1].legend(fontsize=7, ncol=2)
    if title:
        fig.suptitle(title, fontsize=10)
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


def allocation_table(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Per final student and tower: what it keeps of the teacher (:func:`tinyclip.studies.common.allocation_columns`
    rows with ``sparsity`` and ``{tower}_share``), one line per (student, tower)."""
    out = [{"Student": r["label"], "Tower": tower, "Student size (% of teacher)": _num(100 * (1 - r["sparsity"])),
            "Share of the teacher's tower (%)": _num(100 * r[f"{tower}_share"]),
            "Hidden": r[f"{tower}_hidden"], "Heads": r[f"{tower}_heads"], "FFN neurons": r[f"{tower}_ffn"],
            "Sub-layers dropped": str(r[f"{tower}_sublayers_dropped"]), "Params (M)": _num(r[f"{tower}_params_m"], 2)}
           for r in rows for tower in ("vision", "text")]
    return pd.DataFrame(out).set_index(["Student", "Tower"]) if out else pd.DataFrame()


def allocation_figure(archs: Mapping[str, Sequence[Mapping[str, Any]]], labels: Mapping[str, str] | None = None,
                      title: str = ""):
    """Per layer of each tower, the share of the teacher's attention heads (dashed) and FFN neurons (solid) a
    student keeps, averaged over its runs (:func:`tinyclip.pruned.pruned_architecture` data); one colour per
    student, the tower's kept hidden width in its legend."""
    import matplotlib.pyplot as plt
    import numpy as np

    archs = {k: v for k, v in archs.items() if v}
    if not archs:
        return None
    labels = labels or {}
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.4 + 0.25 * len(archs)), sharey=True)
    for ax, tower in zip(axes, ("vision", "text")):
        for i, (key, entries) in enumerate(archs.items()):
            colour = f"C{i}"
            layers = [e[tower]["layers"] for e in entries]
            heads = np.mean([[l["heads"] / l["heads_original"] for l in ls] for ls in layers], axis=0)
            mlp = np.mean([[l["mlp"] / l["mlp_original"] for l in ls] for ls in layers], axis=0)
            hidden = np.mean([e[tower]["hidden"] / e[tower]["hidden_original"] for e in entries])
            x = np.arange(len(heads))
            runs = f", {len(entries)} runs" if len(entries) > 1 else ""
            ax.plot(x, mlp, "-o", color=colour, ms=4, label=f"{labels.get(key, key)} (hidden {100 * hidden:.0f} %{runs})")
            ax.plot(x, heads, "--s", color=colour, ms=3, alpha=0.8)
        ax.set_xticks(x)
        ax.set_xlabel(f"{tower} layer")
        ax.set_ylim(-0.05, 1.05)
        ax.grid(alpha=0.3)
        ax.set_title(f"{tower} tower: FFN neurons (solid), heads (dashed)", fontsize=9)
        # per panel (the kept hidden width differs between the towers), below the axes (no line hidden)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2))
    axes[0].set_ylabel("share of the teacher's layer kept")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def curve_figure(curves: Mapping[str, Any], speedups: Mapping[str, Sequence[Mapping[str, Any]]],
                 labels: Mapping[str, str], headline: float = 1.0, title: str = ""):
    """Learning curves (score against samples seen) of two arms, mean over seeds and items with the 95 % band, one
    panel (own axis) per metric; the headline target as a dashed line, each arm's crossing marked."""
    import matplotlib.pyplot as plt
    import numpy as np

    metrics = list(curves)
    if not metrics:
        return None
    fig, axes = plt.subplots(1, len(metrics), figsize=(6.2 * len(metrics), 4.0))
    axes = [axes] if len(metrics) == 1 else list(axes)
    colours = {"inherited": "#1f77b4", "scratch": "#d62728"}
    for ax, metric in zip(axes, metrics):
        x = np.asarray(curves[metric]["samples"]) / 1000
        for key in ("inherited", "scratch"):
            c = curves[metric][key]
            ax.plot(x, c["mean"], "o-", ms=3, color=colours[key], label=labels.get(key, key))
            ax.fill_between(x, c["low"], c["high"], color=colours[key], alpha=0.2, lw=0)
        head = next((s for s in speedups.get(metric, []) if s["fraction"] == headline), None)
        if head is not None:
            ax.axhline(head["target"], color="black", ls="--", lw=0.8,
                       label=f"target: from scratch's final ({head['target']:.1f})")
            for key, samples in (("inherited", head["samples_fast"]), ("scratch", head["samples_slow"])):
                if np.isfinite(samples):
                    ax.plot([samples / 1000], [head["target"]], "D", color=colours[key], ms=7, mec="black")
        ax.set_xlabel("samples seen (thousands)")
        ax.set_ylabel(SHORT[metric])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def speedup_table(speedups: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One line per target: its level, the samples each arm needs, the speed-up [95 % interval] and any bound."""
    def samples(v: float) -> str:
        return "not reached" if math.isinf(v) else "0 (at the start)" if v == 0 else f"{v / 1000:,.1f} k"

    def ratio(v: float) -> str:
        return "∞" if math.isinf(v) else DASH if math.isnan(v) else f"{v:.2f}"

    bounds = {"": "", "lower": "lower bound (from scratch never reaches it)",
              "upper": "upper bound (inherited never reaches it)", "undefined": "neither arm reaches it"}
    out = []
    for s in speedups:
        out.append({"Target (share of from scratch's final)": f"{s['fraction']:.2f}",
                    "Target score (%)": f"{s['target']:.1f}", "Inherited needs": samples(s["samples_fast"]),
                    "From scratch needs": samples(s["samples_slow"]),
                    "Speed-up (×)": f"{ratio(s['estimate'])} [{ratio(s['ci_low'])}, {ratio(s['ci_high'])}]",
                    "Replicates not reaching it (%)": f"{100 * s['censored']:.0f}",
                    "Bound": bounds.get(s["bound"], s["bound"]) or DASH})
    return pd.DataFrame(out).set_index("Target (share of from scratch's final)")
