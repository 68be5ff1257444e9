"""pyproject.toml and environment.yml name the same packages with the same ranges."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import yaml

if sys.version_info >= (3, 11):
    import tomllib
else:  # the test extra installs tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def _split(requirement: str) -> tuple[str, str]:
    name, spec = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*)$", requirement).groups()
    return name.lower().replace("_", "-"), spec.replace(" ", "")


def test_environment_yml_mirrors_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = dict(map(_split, project["dependencies"]))
    for extra in project["optional-dependencies"].values():
        wanted.update(map(_split, extra))

    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    mirrored = dict(_split(r) for r in pip_section if not r.startswith("-e"))
    assert mirrored == wanted


def test_no_exact_pins():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for requirement in project["dependencies"]:
        assert "==" not in requirement, f"pin ranges, not exact versions: {requirement}"


def test_readme_leads_with_the_two_commands_ci_runs():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    blocks = re.findall(r"```(?:bash|sh)\n(.*?)```", readme, flags=re.S)
    demo, tests = blocks[0], blocks[1]
    assert "xrstudy demo" in demo and 'pip install -e ".[test]"' in tests and "pytest" in tests
    assert 'pip install -q -e ".[test]"' in ci and "python -m pytest" in ci and "xrstudy demo" in ci
    assert "pip install -q -e .\n" in ci  # command 1 installs without the test extras


def test_version_is_the_projects(capsys):
    from xrstudy import cli

    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    with pytest.raises(SystemExit) as exited:
        cli.main(["--version"])
    assert exited.value.code == 0 and capsys.readouterr().out.strip() == f"xrstudy {version}"


def test_the_package_list_is_every_package_folder():
    """pyproject.toml lists its packages (so that `xrstudy.notebooks` can be mapped onto notebooks/): a new
    subpackage must be added there, or it would silently miss the wheel."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "xrstudy").rglob("__init__.py")
        if "__pycache__" not in init.parts
    }
    assert set(setuptools["packages"]) == folders | {"xrstudy.notebooks"}
    assert setuptools["package-dir"] == {"xrstudy.notebooks": "notebooks"}
    assert (ROOT / "notebooks" / "__init__.py").is_file(), "the editable finder maps only a folder it sees as a package"
    data = setuptools["package-data"]
    assert data["xrstudy.training.tables"] == ["*.csv"] and "*.ipynb" in data["xrstudy.notebooks"]
    # every folder is a package: a data folder Python could import as a namespace package would draw
    # setuptools' "Package would be ignored" warning on every build
    unpackaged = [p for p in (ROOT / "xrstudy").rglob("*") if p.is_dir() and p.name != "__pycache__"]
    assert all((p / "__init__.py").is_file() for p in unpackaged), unpackaged
