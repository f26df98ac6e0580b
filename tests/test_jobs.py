"""Parallel jobs (tinyclip.jobs.run_many): while jobs run side by side, a status line reports each one's stage,
step / total and ETA at least once a minute (here every 0.5 s), read from the status file the stage loop writes."""
from __future__ import annotations

import json
import os
import subprocess
import time

from tinyclip import jobs


def test_side_by_side_jobs_report_their_progress(monkeypatch, capsys):
    monkeypatch.setenv(jobs.STATUS_INTERVAL_ENV, "0.5")

    def fake_run(cmd, stdout, stderr, text, env):
        status = env["TINYCLIP_STATUS_FILE"]
        for step in (10, 20):  # what train._write_status writes on logging steps
            with open(status + ".tmp", "w") as f:
                json.dump({"stage": "S50", "step": step, "steps": 40, "s_per_step": 3.0}, f)
            os.replace(status + ".tmp", status)
            time.sleep(1.2)
        return subprocess.CompletedProcess(cmd, 0, stdout="[]\n", stderr="")

    monkeypatch.setattr(jobs.subprocess, "run", fake_run)
    results = jobs.run_many(["a.yaml", "b.yaml"], [0], parallel=2)
    assert [r["returncode"] for r in results] == [0, 0]
    lines = [l for l in capsys.readouterr().err.splitlines() if "jobs done" in l]
    assert len(lines) >= 2
    assert any("a seed 0: S50 step 20/40, stage ETA 1.0 min" in l and "b seed 0: S50 step" in l for l in lines)
    assert lines[0].split("] ")[1].startswith("0/2 jobs done")


def test_a_single_job_prints_no_status_lines(monkeypatch, capsys):
    monkeypatch.setenv(jobs.STATUS_INTERVAL_ENV, "0.2")
    monkeypatch.setattr(jobs.subprocess, "run", lambda cmd, stdout, stderr, text, env: (
        time.sleep(0.6), subprocess.CompletedProcess(cmd, 0, stdout="[]\n", stderr=""))[1])
    jobs.run_many(["a.yaml"], [0], parallel=2)
    assert "jobs done" not in capsys.readouterr().err
