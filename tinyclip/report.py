"""Reports: execute a parameterized notebook with papermill and render it to HTML without input cells.

``tinyclip report NAME [--profile mini] [-p key value ...]`` runs ``notebooks/NAME.ipynb`` with the given
parameters into ``build/<profile>/NAME.ipynb`` and renders ``reports/NAME.html`` (mini profile, the committed
reports) or ``reports/<profile>/NAME.html`` (other profiles, not committed), with a provenance footer (git commit,
package versions, host, parameters), and refreshes ``reports/index.html``.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import html
import json
import os
import time
from pathlib import Path
from typing import Any

import yaml

from .errors import TinyCLIPError
from .runs import atomic_write_text, project_root, provenance

DEFAULT_PROFILE = "mini"


def notebooks_dir() -> Path:
    return project_root() / "notebooks"


def reports_root() -> Path:
    """``$TINYCLIP_REPORTS_ROOT`` if set (tests, scratch renders), else ``<project root>/reports``."""
    env = os.environ.get("TINYCLIP_REPORTS_ROOT")
    return Path(env) if env else project_root() / "reports"


def reports_dir(profile: str) -> Path:
    base = reports_root()
    return base if profile == DEFAULT_PROFILE else base / profile


def render(name: str, profile: str = DEFAULT_PROFILE, parameters: dict[str, Any] | None = None,
           timeout_s: int | None = None) -> Path:
    """Execute ``notebooks/<name>.ipynb`` under ``profile`` and write its HTML report; returns the HTML path."""
    import nbformat
    import papermill
    from nbconvert import HTMLExporter

    source = notebooks_dir() / f"{name}.ipynb"
    if not source.is_file():
        known = ", ".join(sorted(p.stem for p in notebooks_dir().glob("*.ipynb"))) or "none"
        raise TinyCLIPError(f"no notebook {source}; known notebooks: {known}")
    params = {"profile": profile, **(parameters or {})}
    executed = project_root() / "build" / profile / f"{name}.ipynb"
    executed.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    try:
        papermill.execute_notebook(str(source), str(executed), parameters=params, kernel_name="python3",
                                   cwd=str(notebooks_dir()), progress_bar=False, log_output=False,
                                   execution_timeout=timeout_s)
    except papermill.PapermillExecutionError as exc:
        raise TinyCLIPError(f"notebook {name} failed in cell {exc.exec_count}: {exc.ename}: {exc.evalue} "
                            f"(executed copy with the traceback: {executed})") from None
    wall_s = time.time() - started

    notebook = nbformat.read(executed, as_version=4)
    notebook.cells.append(nbformat.v4.new_markdown_cell(_provenance_markdown(name, params, wall_s)))
    exporter = HTMLExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
    body, _ = exporter.from_notebook_node(notebook)
    out = reports_dir(profile) / f"{name}.html"
    atomic_write_text(out, body)
    write_index()
    return out


def _provenance_markdown(name: str, params: dict[str, Any], wall_s: float) -> str:
    prov = provenance(seed=int(params.get("seed", 0)), device=str(params.get("device", "cpu")),
                      command=["tinyclip", "report", name, "--profile", str(params["profile"])])
    packages = ", ".join(f"{k} {v}" for k, v in prov["packages"].items())
    dirty = " (uncommitted changes)" if prov["git_dirty"] else ""
    return (f"---\n**Provenance.** Notebook `{name}`, parameters `{json.dumps(params, sort_keys=True)}`, "
            f"git commit `{prov['git_commit']}`{dirty}, host `{prov['host']}` ({prov['platform']}, "
            f"{prov['torch_threads']} torch threads), rendered {prov['started']} in {wall_s:.0f} s. "
            f"Packages: {packages}.")


def write_index() -> Path:
    """``reports/index.html``: every rendered report with its profile and modification time."""
    base = reports_root()
    base.mkdir(parents=True, exist_ok=True)
    rows = []
    for path in sorted(base.rglob("*.html")):
        if path.name == "index.html":
            continue
        rel = path.relative_to(base)
        profile = rel.parts[0] if len(rel.parts) > 1 else DEFAULT_PROFILE
        stamp = _dt.datetime.fromtimestamp(path.stat().st_mtime, _dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        rows.append(f"<tr><td><a href='{html.escape(str(rel))}'>{html.escape(path.stem)}</a></td>"
                    f"<td>{html.escape(profile)}</td><td>{stamp}</td></tr>")
    page = ("<!doctype html><meta charset='utf-8'><title>tinyclip-repro reports</title>"
            "<h1>tinyclip-repro reports</h1><p>Mini-profile results are measured at mini scale on CPU; they are "
            "not the paper's numbers. Each report ends with its provenance.</p>"
            "<table border=1 cellpadding=4><tr><th>report</th><th>profile</th><th>rendered</th></tr>"
            + "".join(rows) + "</table>\n")
    out = base / "index.html"
    atomic_write_text(out, page)
    return out


def _cmd_report(args: argparse.Namespace) -> int:
    params = {key: yaml.safe_load(value) for key, value in (args.parameter or [])}
    out = render(args.name, args.profile, params, timeout_s=args.timeout)
    print(json.dumps({"report": str(out), "notebook": args.name, "profile": args.profile}))
    return 0
