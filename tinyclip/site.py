"""The report site's front page: ``reports/index.html`` (``reports/<profile>/index.html`` for other profiles).

It shows the claims C1–C9 with their verdict, effect, interval and seeds (from ``claims.json``), each linking to
the report that measured it; then every report with what it contains in one line and its provenance (commit,
date, machine, profile, wall time, status) from ``manifest.json``. Only reports that exist are linked.
"""
from __future__ import annotations

import html
import json
from pathlib import Path

from .runs import atomic_write_text

_COLOURS = {"reproduced": "#1a7f37", "not reproduced": "#cf222e", "inconclusive": "#6e7781",
            "not yet run": "#9a6700", "failed": "#cf222e", "ok": "#1a7f37"}
_STYLE = """<style>
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1240px; margin: 24px auto;
       padding: 0 16px; color: #1f2328; line-height: 1.45; }
table { border-collapse: collapse; width: 100%; font-size: 13.5px; margin: 8px 0 20px; }
th, td { border: 1px solid #d0d7de; padding: 5px 8px; vertical-align: top; text-align: left; }
th { background: #f6f8fa; }
td.num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
.verdict { font-weight: 600; white-space: nowrap; }
.note { color: #57606a; font-size: 12.5px; }
</style>"""


def manifest_path(profile: str) -> Path:
    from .report import reports_dir

    return reports_dir(profile) / "manifest.json"


def compute_path(profile: str) -> Path:
    from .report import reports_dir

    return reports_dir(profile) / "compute.json"


def inventory_path(profile: str) -> Path:
    """``tinyclip inventory``'s record (:mod:`tinyclip.studies.inventory`), read by the index."""
    from .report import reports_dir

    return reports_dir(profile) / "inventory.json"


def record_compute(profile: str, notebook: str, train_minutes: float, runs: int) -> None:
    """A notebook's training cost for the index: the summed training minutes of the runs it reads (each run's own
    ``train_s``, so runs shared with another notebook count in both) and how many runs that is."""
    path = compute_path(profile)
    data = json.loads(path.read_text()) if path.is_file() else {}
    data[notebook] = {"train_min": round(train_minutes, 1), "runs": runs}
    atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True) + "\n")


def _fmt(value, digits: int = 2, signed: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _verdict(text: str) -> str:
    return f"<span class='verdict' style='color:{_COLOURS.get(text, '#1f2328')}'>{html.escape(text)}</span>"


def index_html(profile: str) -> str:
    from .report import NOTEBOOKS, reports_dir
    from .studies.claims import load_claims

    base = reports_dir(profile)
    manifest = json.loads(manifest_path(profile).read_text()) if manifest_path(profile).is_file() else {}
    compute = json.loads(compute_path(profile).read_text()) if compute_path(profile).is_file() else {}
    claims_rows = []
    for c in load_claims(profile):
        exists = (base / f"{c['notebook']}.html").is_file()
        link = (f"<a href='{html.escape(c['notebook'])}.html'>{html.escape(c['notebook'])}</a>" if exists
                else html.escape(c["notebook"]))
        ratio = c.get("kind") == "ratio"
        effect = _fmt(c.get("effect"), 3 if ratio else 2, signed=not ratio)
        interval = ("–" if c.get("ci_low") is None else
                    f"[{_fmt(c['ci_low'], 3 if ratio else 2, not ratio)}, {_fmt(c['ci_high'], 3 if ratio else 2, not ratio)}]")
        unit = "ratio" if ratio else ("points" if c.get("effect") is not None and c.get("kind") else "")
        claims_rows.append(
            f"<tr><td>{c['id']}</td><td>{html.escape(c['claim'])}</td><td>{_verdict(c['verdict'])}</td>"
            f"<td class='num'>{effect} {unit}</td><td class='num'>{interval}</td>"
            f"<td class='num'>{c.get('n_seeds') or '–'}</td><td>{html.escape(c.get('metric') or '–')}</td>"
            f"<td>{link}</td></tr>")
    report_rows = []
    for name, description in NOTEBOOKS.items():
        entry = manifest.get(name)
        exists = (base / f"{name}.html").is_file()
        title = f"<a href='{name}.html'>{name}</a>" if exists else name
        if entry is None:
            status, prov = ("not yet run", "–")
        else:
            status = entry["status"]
            dirty = " (uncommitted changes)" if entry.get("dirty") else ""
            prov = (f"commit <code>{html.escape(str(entry['commit'])[:10])}</code>{dirty}, "
                    f"{html.escape(entry['date'][:16].replace('T', ' '))} UTC, {html.escape(entry['machine'])}, "
                    f"profile {html.escape(entry['profile'])}")
            if entry.get("error"):
                prov += f"<br><span class='note'>{html.escape(entry['error'])}</span>"
        wall = f"{entry['wall_s'] / 60:.1f} min" if entry else "–"
        if name in compute:
            wall += (f"<br><span class='note'>training: {compute[name]['train_min']:.0f} min summed over "
                     f"{compute[name]['runs']} runs</span>")
        report_rows.append(f"<tr><td>{title}</td><td>{html.escape(description)}</td><td>{_verdict(status)}</td>"
                           f"<td class='num'>{wall}</td><td class='note'>{prov}</td></tr>")
    scale = ("mini profile: measured at mini scale on a 2-core CPU with the embedded data set and a mini teacher — "
             "<b>these are not the paper's numbers</b>" if profile == "mini" else f"{html.escape(profile)} profile")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>tinyclip-repro reports ({profile})</title>"
            f"{_STYLE}</head><body><h1>tinyclip-repro: does TinyCLIP reproduce?</h1>"
            f"<p>Reports of this reproduction of <i>TinyCLIP: CLIP Distillation via Affinity Mimicking and Weight "
            f"Inheritance</i> (ICCV 2023, <a href='https://arxiv.org/abs/2309.12314'>arXiv:2309.12314</a>); {scale}. "
            "A verdict is computed by code from a 95 % bootstrap interval over seeds and evaluation items: "
            "<i>reproduced</i> when the interval lies wholly on the side the paper claims, <i>not reproduced</i> when "
            "wholly on the other side, <i>inconclusive</i> otherwise. Machine-readable: "
            "<a href='claims.json'>claims.json</a>.</p>"
            "<h2>Claims</h2><table><tr><th>id</th><th>claim (paper)</th><th>verdict</th><th>effect</th>"
            "<th>95 % interval</th><th>seeds</th><th>metric</th><th>report</th></tr>"
            + "".join(claims_rows) + "</table>"
            "<h2>Reports</h2><table><tr><th>report</th><th>contents</th><th>status</th><th>wall time</th>"
            "<th>provenance</th></tr>" + "".join(report_rows) + "</table>"
            "<p class='note'>Wall time: executing and rendering the notebook (with its runs already trained, "
            "this is minutes); training: the summed training time of the runs the report reads, each measured in "
            "its run folder (runs side by side share the cores, so the wall time to train them from nothing is "
            "about this sum divided by the parallel jobs).</p>"
            + _inventory_html(profile) + "</body></html>\n")


def _inventory_html(profile: str) -> str:
    """The ``make reproduce-all`` paragraph from ``inventory.json`` (``tinyclip inventory``), if it exists."""
    path = inventory_path(profile)
    if not path.is_file():
        return ""
    inv = json.loads(path.read_text())
    setup = ", ".join(f"{k} {v:.0f} min" for k, v in inv.get("setup_min", {}).items()) or "not recorded"
    seeds = ", ".join(str(s) for s in inv["seeds"])
    return (f"<h2>Everything from nothing: <code>make reproduce-all</code></h2><p>The notebooks read "
            f"{inv['runs']} distinct runs (seeds {seeds}; shared runs counted once): {inv['finished']} have "
            f"finished ({inv['train_min_measured']:.0f} min of training, measured in their folders), "
            f"{inv['unfinished']} have not ({inv['train_min_projected']:.0f} min projected from each one's steps and "
            f"the measured seconds per step of finished runs like it). Measured set-up: {setup}. With "
            f"{inv['parallel']} jobs side by side the whole of it takes about <b>{inv['reproduce_all_h']:.1f} h</b> "
            "on this machine — a projection from measured parts, not a timed end-to-end run (the notebooks' own "
            "execution is not included)" + _inventory_gaps(inv) + ". <code>tinyclip inventory</code> refreshes it.</p>"
            + _inventory_table(inv))


def _inventory_table(inv: dict) -> str:
    """Finished runs per notebook (a run shared by two notebooks counts in both rows)."""
    finished = inv.get("notebook_finished") or {}
    rows = "".join(f"<tr><td>{html.escape(name)}</td><td class='num'>{finished.get(name, 0)} of {total}</td></tr>"
                   for name, total in (inv.get("notebook_runs") or {}).items())
    return f"<table><tr><th>notebook</th><th>runs finished</th></tr>{rows}</table>" if rows else ""


def _inventory_gaps(inv: dict) -> str:
    """What the projection leaves out: runs with no finished run like them, arms whose runs cannot be named yet."""
    gaps = []
    if inv.get("unprojected"):
        gaps.append(f"{inv['unprojected']} unfinished runs have no finished run like them and count as zero")
    if inv.get("unresolved"):
        gaps.append(f"{len(inv['unresolved'])} arm-seeds could not be named yet (e.g. their teacher is not built) "
                    "and are missing")
    return ("; it is a lower bound: " + "; ".join(gaps)) if gaps else ""


def _effect_text(c: dict) -> str:
    """Effect and interval in one cell: ``+3.47 [+2.78, +4.18] points``, ``0.982 [0.975, 0.990] (ratio)``."""
    if c.get("effect") is None:
        return "–"
    if c.get("ci_low") is None:  # a deterministic check (C9): no interval
        return f"{c['effect']:.2f} (deterministic, no interval)"
    if c.get("kind") == "ratio":
        return f"{c['effect']:.3f} [{c['ci_low']:.3f}, {c['ci_high']:.3f}] (ratio)"
    return f"{c['effect']:+.2f} [{c['ci_low']:+.2f}, {c['ci_high']:+.2f}] points"


def claims_markdown(profile: str, link_prefix: str = "reports/") -> str:
    """The claims table of ``claims.json`` as markdown (the README's copy is checked against it by the tests)."""
    from .report import reports_dir
    from .studies.claims import load_claims

    base = reports_dir(profile)
    lines = ["| id | claim (paper) | verdict | effect [95 % interval] | seeds | metric | report |",
             "|---|---|---|---|---|---|---|"]
    for c in load_claims(profile):
        name = c["notebook"]
        report = (f"[{name}]({link_prefix}{name}.html)" if (base / f"{name}.html").is_file()
                  else f"{name} (not rendered yet)")
        lines.append(f"| {c['id']} | {c['claim']} | **{c['verdict']}** | {_effect_text(c)} | "
                     f"{c.get('n_seeds') or '–'} | {c.get('metric') or '–'} | {report} |")
    return "\n".join(lines) + "\n"


def sync_readme_claims(readme: str | Path, profile: str = "mini") -> bool:
    """Rewrite the claims table in ``readme`` from ``claims.json``; True when it changed."""
    path = Path(readme)
    text = path.read_text()
    start = text.find("| id | claim (paper) | verdict |")
    if start < 0:
        raise ValueError(f"{path} has no claims table (a line starting '| id | claim (paper) | verdict |')")
    end = text.find("\n\n", start)
    new = text[:start] + claims_markdown(profile).rstrip("\n") + (text[end:] if end >= 0 else "\n")
    if new != text:
        atomic_write_text(path, new)
    return new != text


def write_index(profile: str) -> Path:
    from .report import reports_dir

    base = reports_dir(profile)
    base.mkdir(parents=True, exist_ok=True)
    out = base / "index.html"
    atomic_write_text(out, index_html(profile))
    return out
