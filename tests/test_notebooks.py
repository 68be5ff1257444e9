"""The notebooks: the cell notebooks take exactly RunConfig's fields as their papermill parameters;
every notebook runs as shipped (its defaults, no `-p`); the study notebooks are thin and show figures."""

from __future__ import annotations

import ast
import os
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
    assert params["out_dir"] == "" and params["roots"] == []  # as shipped: the notebook picks a temporary out_dir
    RunConfig.from_dict({**params, "out_dir": "anywhere"})  # and its defaults form a valid cell


@pytest.mark.parametrize("name", ["10_pretrain.ipynb", "20_transfer.ipynb"])
def test_cell_notebooks_are_stored_without_outputs(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["10_pretrain.ipynb", "20_transfer.ipynb"])
def test_cell_notebooks_lead_with_the_summary_and_collapse_their_parameters(name):
    """JupyterLab hides a cell's source when its metadata says jupyter.source_hidden."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "parameters" in code[0].metadata["tags"] and code[0].metadata["jupyter"]["source_hidden"]
    assert code[1].metadata["jupyter"]["source_hidden"] and "train.run(cfg, resume=True)" in code[1].source
    assert code[2].source == "curves.run_summary(result)" and code[3].source.startswith("curves.learning_curve(")


TQDM_WARNINGS = ("TqdmWarning", "IProgress not found")


@pytest.mark.parametrize("name", sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")))
def test_no_shipped_notebook_shows_a_tqdm_warning(name):
    assert not any(w in _outputs(NOTEBOOKS / name) for w in TQDM_WARNINGS)


# ---- the study notebooks: thin, parameterised, executed at tiny sizes -------------------------
STUDY_PARAMETERS = {
    "00_explore_sources.ipynb": ["sources", "metadata_only", "labels", "top", "out_dir"],
    "30_figures.ipynb": ["results_dir", "out_dir"],
    "40_scaling.ipynb": ["results_dir", "out_dir", "n_boot"],
}
LEGACY = Path(__file__).resolve().parent / "data" / "legacy"


@pytest.mark.parametrize("name", sorted(STUDY_PARAMETERS))
def test_study_notebook_parameters_and_no_logic(name):
    assert list(parameters_of(NOTEBOOKS / name)) == STUDY_PARAMETERS[name]
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "def " not in code and "class " not in code and "import *" not in code, "thin: logic lives in xrstudy"
    assert "savefig" not in code, "figures are written by xrstudy into out_dir"


@pytest.mark.parametrize("name", sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")))
def test_papermill_sees_every_parameter(name):
    """papermill parses the parameters cell itself (for `--help-notebook` and to tell known `-p` names
    from unknown ones); a quote in a comment makes it skip that line and warn 'unknown parameter'."""
    import papermill

    assert list(papermill.inspect_notebook(str(NOTEBOOKS / name))) == list(parameters_of(NOTEBOOKS / name))


def test_paper_format_results_are_the_imported_fixtures(tmp_path):
    from xrstudy.results import legacy, store

    legacy.import_legacy(LEGACY, tmp_path)
    bundled = NOTEBOOKS / "paper-format-results"
    assert sorted(p.name for p in tmp_path.glob("*.json")) == sorted(p.name for p in bundled.glob("*.json"))
    assert not store.scan(bundled).invalid


def test_example_results_are_the_demo_cells_of_today():
    """The bundled store is exactly the demo's grid (a changed grid or run_id must refresh it)."""
    from xrstudy import demo
    from xrstudy.results import store
    from xrstudy.sweeps import sweepfile

    roots = {name: Path("/anywhere") / name for name in ("chexpert", "nih", "padchest-cl", "shapes", "digits")}
    cells = sweepfile.load_sweep(demo.demo_sweep(Path("/anywhere"), roots, demo.SIZES["small"]))
    bundled = NOTEBOOKS / "example-results"
    assert sorted(f"{c.run_id}.json" for c in cells) == sorted(p.name for p in bundled.glob("*.json"))
    scan = store.scan(bundled)
    assert not scan.invalid and all(r["origin"] == "xrstudy" and r["status"] == "ok" for r in scan.results)


def test_reference_figures_are_what_the_example_results_draw(tmp_path):
    from xrstudy.plots import render

    reference = NOTEBOOKS.parent / "figures"
    written = render.render_all(NOTEBOOKS / "example-results", tmp_path).files
    assert sorted(p.name for p in written) == sorted(p.name for p in reference.iterdir() if p.name != "README.md")
    for csv in sorted(tmp_path.glob("*.csv")):
        assert csv.read_text() == (reference / csv.name).read_text(), f"figures/{csv.name} is stale"


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    from xrstudy.sweeps.kernels import WarmKernel

    with WarmKernel(cwd=tmp_path_factory.mktemp("cwd")) as warm:
        yield warm


def _outputs(path: Path) -> str:
    nb = nbformat.read(path, as_version=4)
    return "".join(
        o.get("text", "") + str(o.get("data", {}).get("text/plain", "")) for c in nb.cells for o in c.get("outputs", [])
    )


@pytest.mark.slow
def test_figures_and_scaling_notebooks_on_generated_stores(tmp_path, kernel):
    from stores import synthetic_store

    from xrstudy.results import legacy

    paper = tmp_path / "paper"
    legacy.import_legacy(LEGACY, paper)
    kernel.execute(
        NOTEBOOKS / "30_figures.ipynb",
        tmp_path / "30.ipynb",
        {"results_dir": str(paper), "out_dir": str(tmp_path / "f30")},
    )
    assert (tmp_path / "f30" / "bars_padchest-cl_auc.png").is_file() and (
        tmp_path / "f30" / "full_shot_means.csv"
    ).is_file()
    assert "imagenet21k_bit152x4" in _outputs(tmp_path / "30.ipynb")

    store_dir = synthetic_store(tmp_path / "synthetic")
    kernel.execute(
        NOTEBOOKS / "40_scaling.ipynb",
        tmp_path / "40.ipynb",
        {"results_dir": str(store_dir), "out_dir": str(tmp_path / "f40"), "n_boot": 10},
    )
    fits = (tmp_path / "f40" / "scaling_fits.csv").read_text()
    assert fits.count("\n") > 1 and (tmp_path / "f40" / "data_scale_padchest-cl_auc.png").is_file()


@pytest.mark.slow
def test_explore_sources_notebook_on_demo_sources_metadata_only(tmp_path, kernel, tiny_demo):
    data = tiny_demo["out"] / "data"
    entries = [
        f"chexpert={data / 'CheXpert-v1.0-small'}",
        f"nih={data / 'ChestX-ray14'}",
        f"padchest={data / 'PadChest'}",
    ]
    kernel.execute(
        NOTEBOOKS / "00_explore_sources.ipynb",
        tmp_path / "00.ipynb",
        {"sources": entries, "metadata_only": True, "out_dir": str(tmp_path / "explore")},
    )
    out = tmp_path / "explore"
    for name in ("finding_counts", "label_cooccurrence", "uncertain_shares", "sample_grid"):
        assert (out / f"{name}.png").is_file()
    assert "chexpert" in (out / "source_counts.csv").read_text()
    assert _images(tmp_path / "00.ipynb") == 4


def _images(path: Path) -> int:
    nb = nbformat.read(path, as_version=4)
    return sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))


def _errors(path: Path) -> list[str]:
    nb = nbformat.read(path, as_version=4)
    return [
        f"{o.get('ename')}: {o.get('evalue')}"
        for c in nb.cells
        for o in c.get("outputs", [])
        if o.get("output_type") == "error"
    ]


def _kernel_env(tmp: Path) -> dict[str, str]:
    """The notebooks' default out_dir is a new temporary folder: keep those inside the test's tmp."""
    tmp.mkdir(parents=True, exist_ok=True)
    return {**os.environ, "TMPDIR": str(tmp)}


@pytest.fixture(scope="module")
def demo_cwd_kernel(tiny_demo, tmp_path_factory):
    """A kernel working next to the shared tiny demo, so the notebooks' defaults find `xrstudy-demo/data`."""
    from xrstudy.sweeps.kernels import WarmKernel

    with WarmKernel(cwd=tiny_demo["out"].parent, env=_kernel_env(tmp_path_factory.mktemp("kernel-tmp"))) as warm:
        yield warm


@pytest.fixture(scope="module")
def notebooks_cwd_kernel(tmp_path_factory):
    """A kernel working in notebooks/, as JupyterLab opened there (the bundled stores are relative)."""
    from xrstudy.sweeps.kernels import WarmKernel

    with WarmKernel(cwd=NOTEBOOKS, env=_kernel_env(tmp_path_factory.mktemp("kernel-tmp"))) as warm:
        yield warm


@pytest.mark.slow
@pytest.mark.parametrize("name", ["00_explore_sources.ipynb", "10_pretrain.ipynb", "20_transfer.ipynb"])
def test_data_notebooks_run_as_shipped_on_the_miniature_sources(name, tmp_path, demo_cwd_kernel):
    """Run All, no parameters: the miniature sources (here the shared tiny demo's) and a tiny CPU cell."""
    executed = tmp_path / name
    demo_cwd_kernel.execute(NOTEBOOKS / name, executed, {})
    assert not _errors(executed)
    text = _outputs(executed)
    assert not any(w in text for w in TQDM_WARNINGS), "ipywidgets is installed: tqdm renders its bars"
    if name.startswith("00"):
        assert _images(executed) == 4 and "images from 3 source(s)" in text
    else:
        assert "status: ok" in text and "test/auc" in text
        assert "main metric" in text and _images(executed) == 1  # the summary, then the learning curve


@pytest.mark.slow
@pytest.mark.parametrize("name", ["30_figures.ipynb", "40_scaling.ipynb"])
def test_figure_notebooks_run_as_shipped_on_the_bundled_stores(name, tmp_path, notebooks_cwd_kernel):
    from xrstudy.plots import render

    executed = tmp_path / name
    notebooks_cwd_kernel.execute(NOTEBOOKS / name, executed, {})
    assert not _errors(executed)
    if name.startswith("30"):
        store_dir = NOTEBOOKS / "example-results"
        default = [k for k in render.render_all(store_dir, tmp_path / "d") if k[0] in ("bars", "model_size", "fewshot")]
        paper = render.render_all(store_dir, tmp_path / "p", style="paper")
        assert _images(executed) == len(default) + len(paper) + 1  # + the restyled one
    else:  # the paper-format fixtures hold two model sizes: too few scale points for a fit, and it says so
        assert "3 or more scale points" in _outputs(executed)
    assert not list(NOTEBOOKS.glob("*.png")) and not list(NOTEBOOKS.glob("xrstudy-*")), "nothing left in notebooks/"


def test_miniature_sources_reuse_a_demo_or_are_written_to_a_temporary_folder(tmp_path, monkeypatch):
    import tempfile

    from xrstudy import demo

    work, temporary = tmp_path / "work", tmp_path / "tmp"
    work.mkdir(), temporary.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))
    fresh = demo.miniature_roots()
    assert set(fresh) == {"chexpert", "nih", "padchest-cl", "shapes", "digits"}
    assert all(path.is_relative_to(temporary) and (path / demo.DONE_MARKER).is_file() for path in fresh.values())
    (work / "xrstudy-demo").mkdir()
    (work / "xrstudy-demo" / "data").symlink_to(fresh["digits"].parent)
    reused = demo.miniature_roots()
    assert all(path.is_relative_to(work) for path in reused.values()) and len(list(temporary.iterdir())) == 1
    assert [e.split("=")[0] for e in demo.miniature_sources()] == ["chexpert", "nih", "padchest"]


@pytest.mark.slow
def test_figures_notebook_passes_nbval(tmp_path):
    """30_figures with its defaults (notebooks/example-results), outputs checked where marked."""
    import os
    import subprocess
    import sys

    repo = NOTEBOOKS.parent
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--nbval-lax",
            "-p",
            "no:cacheprovider",
            "-q",
            "--rootdir",
            str(tmp_path),
            str(NOTEBOOKS / "30_figures.ipynb"),
        ],
        cwd=tmp_path,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "passed" in done.stdout
    assert not list(repo.glob("*.png")) and not list(NOTEBOOKS.glob("*.png")), "no figures in the working tree"
