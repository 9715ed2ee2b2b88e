"""The project's set-up files agree with each other."""
from __future__ import annotations

import re
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement.strip(), maxsplit=1)[0].lower()


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_name(r): r.replace(" ", "") for r in project["dependencies"] + project["optional-dependencies"]["dev"]}
    pip_lines = [
        line.strip()[2:].strip().strip("\"")
        for line in (ROOT / "environment.yml").read_text().splitlines()
        if line.strip().startswith("- ") and line.startswith("      ")
    ]
    listed = {_name(r): r.replace(" ", "") for r in pip_lines if not r.startswith("-e")}
    assert listed == wanted, "environment.yml's pip list must equal pyproject's dependencies + dev extra"


def test_torch_has_no_upper_pin():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    torch_req = next(r for r in project["dependencies"] if _name(r) == "torch")
    assert "<" not in torch_req and "==" not in torch_req


def test_readme_quick_start_is_make_demo_and_make_test():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Quick start", 1)[1].split("```", 2)[1]
    commands = [line.strip() for line in block.splitlines()[1:] if line.strip()]
    assert commands == ["make demo", "make test"]
    assert "make test" in (ROOT / ".ci" / "run").read_text()
