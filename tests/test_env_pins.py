"""requirements.txt and environment.yml carry the same pins (issue 2 §1)."""
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _pins(lines):
    pins = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
        if match:
            pins[match.group(1).lower().replace("_", "-")] = match.group(2)
    return pins


def test_environment_yml_matches_requirements():
    requirements = _pins((ROOT / "requirements.txt").read_text().splitlines())
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert _pins(pip_section) == requirements
    assert requirements["open-clip-torch"] == "3.3.0" and requirements["torch"] == "2.14.1"
    # docs/design.md §3: open_clip's webdataset loader needs <=0.2.86; clip-benchmark's accuracy() needs numpy<2.4.
    assert tuple(map(int, requirements["webdataset"].split("."))) <= (0, 2, 86)
    assert tuple(map(int, requirements["numpy"].split(".")[:2])) < (2, 4)
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python"))
    assert python == "python=3.11"
