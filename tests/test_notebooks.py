"""The cell notebooks take exactly RunConfig's fields as their papermill parameters."""

from __future__ import annotations

import ast
from pathlib import Path

import nbformat
import pytest

from xrstudy.config import FIELD_NAMES, RunConfig

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def parameters_of(notebook: Path) -> dict:
    nb = nbformat.read(notebook, as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{notebook.name}: expected one cell tagged 'parameters'"
    values = {}
    for node in ast.parse(tagged[0].source).body:
        assert isinstance(node, ast.Assign), f"{notebook.name}: parameters cell holds only assignments"
        values[node.targets[0].id] = ast.literal_eval(node.value)
    return values


@pytest.mark.parametrize("name", ["10_pretrain.ipynb", "20_transfer.ipynb"])
def test_parameters_cell_names_are_the_runconfig_fields(name):
    params = parameters_of(NOTEBOOKS / name)
    assert list(params) == list(FIELD_NAMES)
    RunConfig.from_dict(params)  # and its defaults form a valid cell


@pytest.mark.parametrize("name", ["10_pretrain.ipynb", "20_transfer.ipynb"])
def test_cell_notebooks_are_stored_without_outputs(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")
