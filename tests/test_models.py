"""Models: the tiny BiT, heads, and every init (local timm file, xrstudy checkpoint) incl. failures."""

from __future__ import annotations

import json

import pytest
import timm
import torch

from xrstudy.config import RunConfig
from xrstudy.models import CheckpointError, create_model, read_checkpoint, write_checkpoint

TINY = "resnetv2_tiny_bit"


def transfer_cfg(**changes) -> RunConfig:
    return RunConfig(**{"kind": "transfer", "target": "demo", "arch": TINY, **changes})


def pretrain_cfg(**changes) -> RunConfig:
    return RunConfig(**{"kind": "pretrain", "sources": ("demo",), "arch": TINY, **changes})


def backbone(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if not k.startswith("head.")}


def same_backbone(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    first, second = backbone(a), backbone(b)
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_tiny_bit_is_a_timm_model():
    model = timm.create_model(TINY, num_classes=4)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 4)
    assert sum(p.numel() for p in model.parameters()) < 500_000
    assert type(model.stem.conv).__name__ == "StdConv2d"


def test_transfer_head_is_fresh_default_or_zero_and_pretrain_head_is_not():
    fresh = create_model(transfer_cfg(), 3).get_classifier()  # the authors': torch's default init
    assert all(torch.count_nonzero(p) > 0 for p in fresh.parameters())
    model = create_model(transfer_cfg().replace(head_init="zero"), 3)  # BiT's
    head = model.get_classifier()
    assert all(torch.count_nonzero(p) == 0 for p in head.parameters())
    assert torch.count_nonzero(model(torch.randn(2, 3, 32, 32))) == 0
    pretrain = create_model(pretrain_cfg(), 5)
    assert torch.count_nonzero(pretrain.get_classifier().weight) > 0


def test_concat_pool_head_is_a_choice():
    model = create_model(transfer_cfg(), 3, head="concat").eval()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)
    with pytest.raises(ValueError, match="head="):
        create_model(transfer_cfg(), 3, head="mlp")


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_timm_init_reads_a_local_file_offline(tmp_path, suffix):
    source = timm.create_model(TINY, num_classes=1000)
    path = tmp_path / f"{TINY}.local_test{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(source.state_dict(), str(path))
    else:
        torch.save(source.state_dict(), path)
    model = create_model(transfer_cfg(arch=f"{TINY}.local_test", init="timm", weights_dir=str(tmp_path)), 7)
    assert same_backbone(model, source)
    assert model.get_classifier().out_channels == 7
    assert torch.count_nonzero(model.get_classifier().weight) > 0  # a fresh head, not the 1000-class one


def test_timm_init_missing_file_names_the_path(tmp_path):
    cfg = transfer_cfg(arch="resnetv2_50x1_bit.goog_in21k", init="timm", weights_dir=str(tmp_path))
    with pytest.raises(CheckpointError) as err:
        create_model(cfg, 2)
    message = str(err.value)
    assert str(tmp_path / "resnetv2_50x1_bit.goog_in21k.safetensors") in message and "download" in message
    with pytest.raises(CheckpointError, match="pretrained tag"):
        create_model(transfer_cfg(init="timm", weights_dir=str(tmp_path)), 2)


def test_timm_init_wrong_architecture(tmp_path):
    torch.save(timm.create_model("resnet18", num_classes=10).state_dict(), tmp_path / f"{TINY}.x.pth")
    with pytest.raises(CheckpointError, match="wrong architecture"):
        create_model(transfer_cfg(arch=f"{TINY}.x", init="timm", weights_dir=str(tmp_path)), 2)


@pytest.fixture
def pretrained(tmp_path):
    cfg = pretrain_cfg(out_dir=str(tmp_path / "out"))
    model = create_model(cfg, 5)
    info = write_checkpoint(cfg.run_dir / "checkpoint.pt", model,
                            {"arch": TINY, "run_id": cfg.run_id, "config": cfg.to_dict(), "split_sha256": "s"})
    return cfg, model, info


def test_checkpoint_init_by_run_id_and_by_path(pretrained):
    cfg, source, info = pretrained
    by_run = create_model(transfer_cfg(init=f"run:{cfg.run_id}", out_dir=cfg.out_dir), 3)
    by_path = create_model(transfer_cfg(init=info["path"]), 3)
    assert same_backbone(by_run, source) and same_backbone(by_path, source)
    sidecar = json.loads((cfg.run_dir / "checkpoint.json").read_text())
    assert sidecar["sha256"] == info["sha256"] and sidecar["config"]["kind"] == "pretrain"
    assert read_checkpoint(info["path"]).sidecar["split_sha256"] == "s"


def test_corrupt_checkpoint_is_a_clear_error(pretrained):
    cfg, _, info = pretrained
    path = cfg.run_dir / "checkpoint.pt"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="SHA-256 .* does not match"):
        create_model(transfer_cfg(init=str(path)), 3)
    path.write_bytes(b"not a checkpoint")  # and a sidecar that agrees: unreadable, still clear
    sidecar = json.loads(path.with_suffix(".json").read_text())
    import hashlib

    sidecar["sha256"] = hashlib.sha256(b"not a checkpoint").hexdigest()
    path.with_suffix(".json").write_text(json.dumps(sidecar))
    with pytest.raises(CheckpointError, match="cannot read weights"):
        create_model(transfer_cfg(init=str(path)), 3)


def test_wrong_architecture_and_missing_checkpoints(pretrained, tmp_path):
    cfg, _, info = pretrained
    with pytest.raises(CheckpointError, match="architecture 'resnetv2_tiny_bit'.*resnetv2_50x1_bit"):
        create_model(transfer_cfg(arch="resnetv2_50x1_bit", init=info["path"]), 3)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        create_model(transfer_cfg(init="run:pretrain-000000000000", out_dir=cfg.out_dir), 3)
    bare = tmp_path / "bare.pt"
    torch.save(timm.create_model(TINY).state_dict(), bare)
    with pytest.raises(CheckpointError, match="no sidecar"):
        create_model(transfer_cfg(init=str(bare)), 3)


def test_scratch_init_is_seeded_without_touching_the_global_rng():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a, b = create_model(pretrain_cfg(seed=0), 5), create_model(pretrain_cfg(seed=0), 5)
    c = create_model(pretrain_cfg(seed=1), 5)
    assert torch.equal(torch.get_rng_state(), before)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.stem.conv.weight, c.stem.conv.weight)
    assert torch.equal(create_model(pretrain_cfg(), 5, seed=1).stem.conv.weight, c.stem.conv.weight)


def test_truncated_timm_file_is_a_clear_error_naming_it(tmp_path):
    path = tmp_path / f"{TINY}.cut.pth"
    torch.save(timm.create_model(TINY).state_dict(), path)
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(CheckpointError, match=f"{path}: cannot read weights"):
        create_model(transfer_cfg(arch=f"{TINY}.cut", init="timm", weights_dir=str(tmp_path)), 2)


def test_checkpoint_loads_with_weights_only(pretrained, monkeypatch):
    cfg, _, info = pretrained
    seen = []
    real_load = torch.load

    def spy(*args, **kwargs):
        seen.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    read_checkpoint(info["path"], arch=TINY)
    assert seen == [True]
