"""Test environment: offline, no writes to ~, no network beyond loopback."""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import tempfile
from pathlib import Path

import pytest
import yaml
from helpers import SMALL, TESTS, noise, phantom_records, save_array

from xrstudy.data import layouts, phantoms

# Set before anything imports huggingface_hub, matplotlib or jupyter.
_SCRATCH = Path(tempfile.mkdtemp(prefix="xrstudy-tests-home-"))
atexit.register(shutil.rmtree, _SCRATCH, ignore_errors=True)
for _var, _sub in {
    "MPLCONFIGDIR": "mpl",
    "HF_HOME": "hf",
    "TORCH_HOME": "torch",
    "JUPYTER_CONFIG_DIR": "jupyter-config",
    "JUPYTER_DATA_DIR": "jupyter-data",
    "JUPYTER_RUNTIME_DIR": "jupyter-runtime",
    "IPYTHONDIR": "ipython",
    "XDG_CACHE_HOME": "cache",
}.items():
    os.environ[_var] = str(_SCRATCH / _sub)
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["MPLBACKEND"] = "Agg"
# OMP_NUM_THREADS stays unset: the sweep runner gives each of its N workers cores / N threads (set here,
# 2 workers x 2 threads on 2 cores made the shared tiny demo 9x slower: 424 s instead of ~46 s).

_LOOPBACK = ("127.", "::1", "localhost")
_real_connect = socket.socket.connect


def _loopback_only_connect(self, address):  # noqa: ANN001 - socket API
    host = address[0] if isinstance(address, tuple) else address
    if isinstance(host, (bytes, bytearray)):
        host = host.decode()
    if self.family == getattr(socket, "AF_UNIX", None) or str(host).startswith(_LOOPBACK):
        return _real_connect(self, address)
    raise OSError(f"network access blocked in tests: connect({address!r})")


@pytest.fixture(autouse=True, scope="session")
def _no_network():
    """The study must run offline: any non-loopback connection fails the test that tries it."""
    socket.socket.connect = _loopback_only_connect
    yield
    socket.socket.connect = _real_connect


# ---- one tiny demo for the whole session -------------------------------------------------------
@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory):
    """`xrstudy demo --size tiny`, run once per test session and shared by the demo, notebook and
    JupyterLab tests (its data, results store and figures). Lives in `<tmp>/xrstudy-demo`, so a kernel
    whose working directory is its parent finds the data as the notebooks' `xrstudy-demo/data`."""
    from xrstudy import demo

    out = tmp_path_factory.mktemp("tiny-demo") / "xrstudy-demo"
    return demo.run_demo(out, "tiny", workers=2, progress=False)


@pytest.fixture
def stub_env(tmp_path, monkeypatch):
    """Workers and kernels import the stub executor from tests/ and log every execution."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])))
    log = tmp_path / "executions.log"
    monkeypatch.setenv("XRSTUDY_STUB_LOG", str(log))
    return log


@pytest.fixture()
def chexpert(tmp_path):
    return layouts.write_layout(
        "chexpert", tmp_path / "CheXpert-v1.0-small", phantom_records(splits=(("train", 0.8), ("valid", 0.2)))
    )


@pytest.fixture()
def nih(tmp_path):
    return layouts.write_layout("nih", tmp_path / "nih", phantom_records(12, splits=(("train", 0.7), ("test", 0.3))))


@pytest.fixture()
def small_sweep(tmp_path) -> Path:
    spec = {
        "defaults": {"out_dir": str(tmp_path / "out")},
        "transfer": [{"target": "cifar10", "init": "scratch", "name": "c10", "grid": {"seed": [0, 1]}}],
    }
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture(scope="module")
def xray_records():
    return phantoms.xray_records(
        16,
        seed=0,
        style=SMALL,
        uncertain_share=0.3,
        blank_share=0.3,
        splits=(("train", 0.7), ("valid", 0.15), ("test", 0.15)),
    )


@pytest.fixture(scope="module")
def roots(tmp_path_factory, xray_records):
    base = tmp_path_factory.mktemp("sources")
    out = {}
    for name in ("chexpert", "nih", "mimic"):
        out[name] = layouts.write_layout(name, base / name, xray_records)
    out["padchest"] = layouts.write_layout(
        "padchest",
        base / "padchest",
        phantoms.xray_records(
            10, seed=1, style=phantoms.PhantomStyle(height=24, width=20, bits=16), uncertain_share=0, blank_share=0
        ),
    )
    out["padchest-cl"] = layouts.write_layout(
        "padchest",
        base / "padchest-cl",
        phantoms.single_finding_records(4, seed=2, classes=("normal", "Effusion", "Cardiomegaly"), style=SMALL),
    )
    out["shapes"] = layouts.write_layout("imagefolder", base / "shapes", phantoms.shape_records(3, seed=3, size=16))
    return out


@pytest.fixture(scope="session")
def rg1_uncr() -> str:
    """The real chest radiograph from the pydicom-data wheel, found without downloading."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file("RG1_UNCR.dcm", download=False)
    if path is None:
        pytest.skip("pydicom-data (RG1_UNCR.dcm) is not installed")
    return str(path)


@pytest.fixture
def jpegs(tmp_path: Path) -> list[str]:
    folder = tmp_path / "jpegs"
    folder.mkdir()
    return [save_array(noise(i, (30 + i % 7, 40, 3)), folder / f"{i:03d}.jpg") for i in range(24)]
