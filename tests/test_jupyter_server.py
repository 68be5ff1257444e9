"""A real JupyterLab server on loopback executes 00_explore_sources through its kernels REST API and
websocket channels, as a user's JupyterLab tab would."""

from __future__ import annotations

import json
import os
import time
import urllib.request
import uuid
from pathlib import Path

import nbformat
import pytest
from labserver import jupyterlab

pytestmark = pytest.mark.slow
NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
TOKEN = "xrstudy-test-" + uuid.uuid4().hex


def _api(base: str, path: str, method: str = "GET", body: dict | None = None) -> dict:
    request = urllib.request.Request(
        f"{base}{path}",
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"token {TOKEN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as reply:
        text = reply.read()
    return json.loads(text) if text else {}


@pytest.fixture
def lab(tmp_path):
    env = {
        **os.environ,
        **{f"JUPYTER_{k}": str(tmp_path / k.lower()) for k in ("CONFIG_DIR", "DATA_DIR", "RUNTIME_DIR")},
    }
    with jupyterlab(tmp_path, TOKEN, env, tmp_path / "lab.log", start_timeout=90) as base:
        yield base


def _execute(ws, code: str, timeout: float = 300) -> list[dict]:
    """One execute_request over the kernel's websocket; the iopub outputs; raises on an error reply."""
    msg_id = uuid.uuid4().hex
    ws.send(
        json.dumps(
            {
                "header": {
                    "msg_id": msg_id,
                    "msg_type": "execute_request",
                    "username": "test",
                    "session": "s",
                    "version": "5.3",
                },
                "parent_header": {},
                "metadata": {},
                "channel": "shell",
                "buffers": [],
                "content": {
                    "code": code,
                    "silent": False,
                    "store_history": True,
                    "user_expressions": {},
                    "allow_stdin": False,
                },
            }
        )
    )
    outputs, reply, idle = [], None, False
    deadline = time.time() + timeout
    while not (reply and idle):
        assert time.time() < deadline, f"no reply within {timeout} s for:\n{code}"
        msg = json.loads(ws.recv())
        if msg.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        kind = msg["header"]["msg_type"]
        if msg["channel"] == "shell" and kind == "execute_reply":
            reply = msg["content"]
        elif kind == "status" and msg["content"]["execution_state"] == "idle":
            idle = True
        elif kind in ("stream", "execute_result", "display_data", "error"):
            outputs.append(msg["content"])
    assert reply["status"] == "ok", f"{reply.get('ename')}: {reply.get('evalue')}\n" + "\n".join(
        reply.get("traceback", [])
    )
    return outputs


def test_explore_sources_runs_through_a_jupyterlab_server(lab, tmp_path, tiny_demo):
    import websocket

    data = tiny_demo["out"] / "data"  # the session's shared tiny demo
    parameters = {
        "sources": [f"chexpert={data / 'CheXpert-v1.0-small'}", f"padchest={data / 'PadChest'}"],
        "metadata_only": False,
        "out_dir": str(tmp_path / "explore"),
    }
    nb = nbformat.read(NOTEBOOKS / "00_explore_sources.ipynb", as_version=4)
    at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    nb.cells.insert(at + 1, nbformat.v4.new_code_cell("\n".join(f"{k} = {v!r}" for k, v in parameters.items())))

    assert "version" in _api(lab, "/api")
    kernel = _api(lab, "/api/kernels", "POST", {"name": "python3"})
    ws = websocket.create_connection(
        f"ws://{lab[len('http://') :]}/api/kernels/{kernel['id']}/channels?token={TOKEN}", timeout=300
    )
    try:
        outputs = [out for cell in nb.cells if cell.cell_type == "code" for out in _execute(ws, cell.source)]
    finally:
        ws.close()
        _api(lab, f"/api/kernels/{kernel['id']}", "DELETE")
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 4, "counts, co-occurrence, uncertain shares and sample images are shown"
    assert any("images from 2 source(s)" in o.get("text", "") for o in outputs)
    assert (tmp_path / "explore" / "sample_grid.png").is_file()
