"""`xrstudy.training.checkpoints` and the weight readers: a full disk in torch.save names the checkpoint,
a FIFO where a weight file belongs is named instead of waited on."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import files_under, one_error_line

from xrstudy import cli, fileio
from xrstudy.training import models


def test_a_full_disk_in_torch_save_names_the_checkpoint(tmp_path, monkeypatch):
    """torch.save to a file name reports a full disk as a bare RuntimeError ("unexpected pos"): the
    checkpoint writer says which file and how much space, and leaves neither a temp file nor a sidecar.
    The same RuntimeError with room to spare is not called a full disk."""
    import torch

    model = torch.nn.Linear(64, 64)  # 16.6 kB of tensors
    target = tmp_path / "runs" / "r" / "checkpoint.pt"

    def failing_save(obj, file, *args, **kwargs):
        Path(file).write_bytes(b"PK partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    monkeypatch.setattr(torch, "save", failing_save)
    monkeypatch.setattr(shutil, "disk_usage", lambda _: SimpleNamespace(total=10**6, used=10**6 - 1000, free=1000))
    with pytest.raises(
        fileio.DiskFullError,
        match=rf"no space left on device writing {target} \(1000 B free there, "
        rf"about 16\.\d KiB to write; the writer said: .*unexpected pos",
    ):
        models.write_checkpoint(target, model, {"arch": "linear"})
    assert not list(target.parent.iterdir())  # no temp file, no sidecar

    monkeypatch.setattr(shutil, "disk_usage", lambda _: SimpleNamespace(total=10**12, used=0, free=10**12))
    with pytest.raises(RuntimeError, match="unexpected pos") as err:
        models.write_checkpoint(target, model, {"arch": "linear"})
    assert not isinstance(err.value, fileio.DiskFullError) and not list(target.parent.iterdir())


def _returns(call, fifo: Path, timeout: float = 120.0):
    """`call()`'s outcome (value or exception), failing the test if it waits on `fifo` instead."""
    outcome: dict[str, object] = {}

    def target() -> None:
        try:
            outcome["value"] = call()
        except BaseException as err:  # noqa: BLE001 - handed to the test
            outcome["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():  # release the reader (a writer that closes at once), then fail
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail(f"waited on the FIFO {fifo}")
    return outcome


def test_weight_readers_name_a_fifo_instead_of_waiting_on_it(tmp_path, capsys):
    from xrstudy import fileio
    from xrstudy.training import callbacks, checkpoints, paper_weights

    fifo = tmp_path / "model.pth.tar"
    os.mkfifo(fifo)
    outcome = _returns(
        lambda: cli.main(["models", "import-paper", str(fifo), "--arch", "resnetv2_50x1_bit", "--out", "x.pt"]), fifo
    )
    assert outcome == {"value": 2}
    assert one_error_line(capsys.readouterr().err) == (
        f"xrstudy: error: {fifo}: not a regular file (a FIFO (named pipe)); expected the authors' model.pth.tar"
    )
    cases = [
        (lambda: paper_weights.read_paper_checkpoint(fifo, "resnetv2_50x1_bit"), "expected the authors' model.pth.tar"),
        (lambda: checkpoints.read_state_dict(fifo), "expected a weight file"),
        (lambda: checkpoints.read_checkpoint(fifo), "expected an xrstudy checkpoint"),
        (lambda: callbacks.load_train_state(fifo), "expected a training state: delete it to start the run afresh"),
        (lambda: fileio.sha256_file(fifo), "is a FIFO (named pipe), not a regular file"),
    ]
    for call, expected in cases:
        error = _returns(call, fifo)["error"]
        assert str(fifo) in str(error) and expected in str(error), error
    assert files_under(tmp_path) == ["model.pth.tar"]
