"""Reports: execute a parameterized notebook with papermill and render it to HTML without input cells.

``tinyclip report NAME [--profile mini] [-p key value ...]`` runs ``notebooks/NAME.ipynb`` with the given
parameters into ``build/<profile>/NAME.ipynb`` and renders ``reports/NAME.html`` (mini profile, the committed
reports) or ``reports/<profile>/NAME.html`` (other profiles, not committed), with a provenance footer (git commit,
package versions, host, parameters), and refreshes ``reports/index.html``.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import yaml

from .errors import TinyCLIPError
from .runs import atomic_write_text, project_root, provenance, remove_stale_temps

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


# One line per notebook for the index: what its report contains.
NOTEBOOKS = {
    "table2": "Table 2: the published LAION-400M reference, the paper-scale architectures rebuilt here (parameters, "
              "MACs, throughput), and the mini analogue with seeded student ratios to the teacher (C8, C9)",
    "ablation_affinity": "Interaction modes: affinity mimicking against contrastive, feature mimicking and "
                         "single-modality affinities on one S50 student (C1)",
    "ablation_inheritance": "Weight inheritance: manual and automatic inheritance against random initialisation at "
                            "one size and budget, three mask-phase lengths (C2, C3)",
    "redundancy": "Redundancy analysis: layer similarity, depth and width removal, learned allocation (C4)",
    "teacher_choice": "Teacher choice: a similar teacher against a stronger dissimilar one (C5)",
    "multistage": "Multi-stage against single-stage compression to 25 % of the teacher, manual and automatic "
                  "inheritance, with the learned allocations (C6)",
    "training_cost": "Training cost: accuracy against samples seen, inherited and from scratch (C7)",
}
# The rendered page: readable width, tables that scroll inside the page instead of being cut off.
_STYLE = """<style>
body { max-width: 1240px; margin: 0 auto; padding: 0 16px; }
.jp-RenderedHTMLCommon table { font-size: 12.5px; display: block; overflow-x: auto; max-width: 100%; }
.jp-RenderedHTMLCommon td, .jp-RenderedHTMLCommon th { white-space: normal; max-width: 420px; }
.jp-RenderedImage img, .jp-OutputArea-output img { max-width: 100%; height: auto; }
</style>"""


def render(name: str, profile: str = DEFAULT_PROFILE, parameters: dict[str, Any] | None = None,
           timeout_s: int | None = None) -> Path:
    """Execute ``notebooks/<name>.ipynb`` under ``profile`` and write its HTML report; returns the HTML path.

    The report shows outputs only (no code, no stderr or warnings), ends with its provenance, and is recorded in
    the profile's ``manifest.json`` (status, commit, date, host, wall time) behind ``index.html``. A failing
    notebook is recorded as failed and raises one line naming the notebook and the cell."""
    import nbformat
    import papermill
    from nbconvert import HTMLExporter

    source = notebooks_dir() / f"{name}.ipynb"
    if not source.is_file():
        known = ", ".join(sorted(p.stem for p in notebooks_dir().glob("*.ipynb"))) or "none"
        raise TinyCLIPError(f"no notebook {source}; known notebooks: {known}")
    params = {"profile": profile, **(parameters or {})}
    # a render killed mid-write left its page's temporary file; no other render writes this page
    remove_stale_temps(reports_dir(profile) / f"{name}.html")
    executed = project_root() / "build" / profile / f"{name}.ipynb"
    executed.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    try:
        papermill.execute_notebook(str(source), str(executed), parameters=params, kernel_name="python3",
                                   cwd=str(notebooks_dir()), progress_bar=False, log_output=False,
                                   execution_timeout=timeout_s)
    except papermill.PapermillExecutionError as exc:
        _record(name, profile, params, time.time() - started, status="failed",
                error=f"cell {exc.exec_count}: {exc.ename}: {exc.evalue}")
        raise TinyCLIPError(f"notebook {name} failed in cell {exc.exec_count}: {exc.ename}: {exc.evalue} "
                            f"(executed copy with the traceback: {executed})") from None
    wall_s = time.time() - started

    notebook = nbformat.read(executed, as_version=4)
    for cell in notebook.cells:  # progress bars, warnings and status lines belong in the log, not the report
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.get("outputs", []) if not (o.get("output_type") == "stream"
                                                                        and o.get("name") == "stderr")]
    notebook.cells.append(nbformat.v4.new_markdown_cell(_provenance_markdown(name, params, wall_s)))
    exporter = HTMLExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
    body, _ = exporter.from_notebook_node(notebook)
    body = body.replace("</head>", _STYLE + "\n</head>", 1)
    out = reports_dir(profile) / f"{name}.html"
    atomic_write_text(out, body)
    _record(name, profile, params, wall_s, status="ok")
    return out


def _record(name: str, profile: str, params: dict[str, Any], wall_s: float, *, status: str,
            error: str | None = None) -> None:
    """Update the profile's manifest.json (what the index shows about each report) and re-render the index."""
    from .site import manifest_path, write_index

    prov = provenance(seed=0, device=str(params.get("device", "cpu")),
                      command=["tinyclip", "report", name, "--profile", profile])
    path = manifest_path(profile)
    manifest = json.loads(path.read_text()) if path.is_file() else {}
    manifest[name] = {"status": status, "error": error, "profile": profile, "parameters": params,
                      "commit": prov["git_commit"], "dirty": prov["git_dirty"], "date": prov["started"],
                      "host": prov["host"], "machine": f"{prov['platform']}, {os.cpu_count()} CPU cores",
                      "device": prov.get("device_name") or prov.get("device"), "wall_s": round(wall_s, 1)}
    atomic_write_text(path, json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    write_index(profile)


def _provenance_markdown(name: str, params: dict[str, Any], wall_s: float) -> str:
    prov = provenance(seed=int(params.get("seed", 0)), device=str(params.get("device", "cpu")),
                      command=["tinyclip", "report", name, "--profile", str(params["profile"])])
    packages = ", ".join(f"{k} {v}" for k, v in prov["packages"].items())
    dirty = " (uncommitted changes)" if prov["git_dirty"] else ""
    return (f"---\n**Provenance.** Notebook `{name}`, parameters `{json.dumps(params, sort_keys=True)}`, "
            f"git commit `{prov['git_commit']}`{dirty}, host `{prov['host']}` ({prov['platform']}, "
            f"{prov['torch_threads']} torch threads), rendered {prov['started']} in {wall_s:.0f} s. "
            f"Packages: {packages}.")


def write_index(profile: str = DEFAULT_PROFILE) -> Path:
    """Re-render the profile's ``index.html`` (see :mod:`tinyclip.site`)."""
    from .site import write_index as _write

    return _write(profile)


def _cmd_report(args: argparse.Namespace) -> int:
    params = {key: yaml.safe_load(value) for key, value in (args.parameter or [])}
    out = render(args.name, args.profile, params, timeout_s=args.timeout)
    print(json.dumps({"report": str(out), "notebook": args.name, "profile": args.profile}))
    return 0
