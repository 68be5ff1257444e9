"""Models: the tiny BiT, heads, and every init (local timm file, xrstudy checkpoint) incl. failures."""

from __future__ import annotations

import json

import pytest
import timm
import torch

from xrstudy.config import RunConfig
from xrstudy.training.models import CheckpointError, create_model, read_checkpoint, write_checkpoint

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
    info = write_checkpoint(
        cfg.run_dir / "checkpoint.pt",
        model,
        {"arch": TINY, "run_id": cfg.run_id, "config": cfg.to_dict(), "split_sha256": "s"},
    )
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


# ---- init: paper -- the authors' released checkpoints (big_transfer naming) ------------------------
def bit_reference_forward(
    state: dict[str, torch.Tensor], x: torch.Tensor, groups: int = 32, eps: float = 1e-10
) -> torch.Tensor:
    """BiT ResNet-v2 computed straight from big_transfer-named tensors, as their bit.py wires it:
    weight-standardised convs, pre-activation units with the stride on the 3x3 conv and the projection
    on the pre-activated input, stem conv -> pad 1 -> max-pool 3/2, head GN -> ReLU -> mean -> 1x1 conv."""
    import torch.nn.functional as F

    def conv(inp, weight, stride=1, padding=0):
        var, mean = torch.var_mean(weight, dim=(1, 2, 3), keepdim=True, unbiased=False)
        return F.conv2d(inp, (weight - mean) / torch.sqrt(var + eps), stride=stride, padding=padding)

    def gn_relu(inp, name):
        return F.relu(F.group_norm(inp, groups, state[f"{name}.weight"], state[f"{name}.bias"]))

    x = conv(x, state["root.conv.weight"], stride=2, padding=3)
    x = F.max_pool2d(F.pad(x, (1, 1, 1, 1)), 3, stride=2)
    for block in sorted({k.split(".")[1] for k in state if k.startswith("body.")}):
        for unit in sorted({k.split(".")[2] for k in state if k.startswith(f"body.{block}.")}):
            name = f"body.{block}.{unit}"
            stride = 2 if unit == "unit01" and block != "block1" else 1
            out = gn_relu(x, f"{name}.gn1")
            projection = state.get(f"{name}.downsample.weight")
            shortcut = x if projection is None else conv(out, projection, stride)
            out = conv(out, state[f"{name}.conv1.weight"])
            out = conv(gn_relu(out, f"{name}.gn2"), state[f"{name}.conv2.weight"], stride, padding=1)
            x = conv(gn_relu(out, f"{name}.gn3"), state[f"{name}.conv3.weight"]) + shortcut
    x = gn_relu(x, "head.gn").mean(dim=(2, 3), keepdim=True)
    return F.conv2d(x, state["head.conv.weight"], state["head.conv.bias"]).flatten(1)


def randomised(arch: str, num_classes: int, seed: int = 0) -> torch.nn.Module:
    """A timm BiT with every tensor random (GroupNorm gammas/betas too, so a swapped name shows)."""
    model = timm.create_model(arch, num_classes=num_classes)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            scale = 0.1 if name.endswith("bias") else 1.0
            offset = 1.0 if "norm" in name and name.endswith("weight") else 0.0  # GroupNorm gammas around 1
            param.copy_(torch.randn(param.shape, generator=generator) * scale + offset)
    return model.eval()


def save_in_authors_format(model: torch.nn.Module, path, prefix: str = "") -> None:
    """What their pretrain.py saves: {"model": state dict, "optimizer": ..., "epoch": ...}."""
    from xrstudy.training.paper_weights import to_paper_state

    path.parent.mkdir(parents=True, exist_ok=True)
    state = {prefix + k: v.clone() for k, v in to_paper_state(model.state_dict()).items()}
    optimizer = {"state": {}, "param_groups": [{"lr": 0.04, "momentum": 0.9, "nesterov": True, "params": [0, 1]}]}
    torch.save({"model": state, "optimizer": optimizer, "epoch": 41}, path)


def test_key_map_covers_every_tensor_of_both_released_sizes_one_to_one():
    from xrstudy.training.paper_weights import key_map

    small, large = key_map("resnetv2_50x1_bit"), key_map("resnetv2_152x4_bit")  # meta device: no memory
    assert len(small) == 153 and len(large) == 459
    assert small["root.conv.weight"] == ("stem.conv.weight", (64, 3, 7, 7))
    downsample = ("stages.0.blocks.0.downsample.conv.weight", (256, 64, 1, 1))
    assert small["body.block1.unit01.downsample.weight"] == downsample
    assert small["body.block4.unit03.gn3.bias"] == ("stages.3.blocks.2.norm3.bias", (512,))
    assert large["body.block3.unit36.conv2.weight"] == ("stages.2.blocks.35.conv2.weight", (1024, 1024, 3, 3))
    assert large["head.gn.weight"] == ("norm.weight", (8192,)) and large["head.conv.bias"][0] == "head.fc.bias"
    backbone_params = sum(
        torch.Size(shape).numel() for name, (_, shape) in large.items() if not name.startswith("head.conv")
    )
    assert backbone_params == 928_340_224  # R152x4, ~928M as the paper says
    assert len({timm_name for timm_name, _ in large.values()}) == len(large)


@pytest.mark.parametrize("arch, groups, size", [(TINY, 8, 32), ("resnetv2_50x1_bit", 32, 64)])
def test_init_paper_computes_what_big_transfer_computes(tmp_path, arch, groups, size):
    """Not just names: the model `init: paper` builds from the authors' file gives the logits that the
    same tensors give in big_transfer's wiring (pre-training kind: their head is kept when it fits)."""
    from xrstudy.training.paper_weights import to_paper_state

    source = randomised(arch, 5)
    save_in_authors_format(source, tmp_path / f"chexpert_bit{'tiny' if arch == TINY else '50x1'}" / "model.pth.tar")
    model = create_model(pretrain_cfg(arch=arch, init="paper", init_label="chexpert", weights_dir=str(tmp_path)), 5)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    reference = bit_reference_forward(to_paper_state(source.state_dict()), x, groups=groups)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), reference, rtol=1e-4, atol=1e-4)


def test_import_paper_round_trips_a_full_size_r50x1(tmp_path, capsys):
    """timm R50x1 -> the authors' names and file format -> `xrstudy models import-paper` -> every tensor back."""
    from xrstudy import cli

    source = randomised("resnetv2_50x1_bit", 13)  # a CheXpert-like 13-class pre-training head
    path = tmp_path / "chexpert_bit50x1" / "model.pth.tar"
    save_in_authors_format(source, path)
    out = tmp_path / "converted.pth"
    command = ["models", "import-paper", str(path), "--arch", "resnetv2_50x1_bit", "--out", str(out)]
    assert cli.main([*command, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["tensors"] == 153 and report["backbone_parameters"] == 23_500_352 and report["head_classes"] == 13
    assert {
        "from": "body.block2.unit01.downsample.weight",
        "to": "stages.1.blocks.0.downsample.conv.weight",
        "shape": [512, 256, 1, 1],
    } in report["loaded"]
    converted = torch.load(out, weights_only=True)
    original = source.state_dict()
    assert converted.keys() == original.keys()
    assert all(torch.equal(converted[k], original[k]) for k in original)
    rebuilt = timm.create_model("resnetv2_50x1_bit", num_classes=13)
    rebuilt.load_state_dict(converted)  # strict: a complete timm state dict
    assert cli.main(command) == 0
    printed = capsys.readouterr().out
    assert "root.conv.weight" in printed and "stem.conv.weight" in printed and "23,500,352" in printed


def test_init_paper_loads_the_backbone_and_builds_a_fresh_head(tmp_path, monkeypatch):
    source = randomised(TINY, 13)
    save_in_authors_format(source, tmp_path / "chexpert_mimic_bittiny" / "model.pth.tar", prefix="module.")
    seen = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **kw: seen.append(kw.get("weights_only")) or real_load(*a, **kw))
    cfg = transfer_cfg(init="paper", init_label="chexpert_mimic", weights_dir=str(tmp_path))
    model = create_model(cfg, 3)
    assert seen == [True] and same_backbone(model, source)
    head = model.get_classifier()
    assert head.out_channels == 3 and torch.count_nonzero(head.weight) > 0  # the authors' fresh default-init conv
    again = create_model(cfg, 3)  # the head's init is seeded by the cell, not by what was loaded before
    assert torch.equal(again.get_classifier().weight, head.weight)


def test_paper_checkpoint_errors_name_the_file_the_arch_and_the_keys(tmp_path):
    from xrstudy.training.paper_weights import read_paper_checkpoint, to_paper_state

    cfg = transfer_cfg(init="paper", init_label="chexpert", weights_dir=str(tmp_path))
    with pytest.raises(CheckpointError) as err:  # missing: where it was looked for and how to get it
        create_model(cfg, 2)
    assert str(tmp_path / "chexpert_bittiny" / "model.pth.tar") in str(err.value)
    assert "download_model.sh chexpert_bittiny" in str(err.value) and "resnetv2_tiny_bit" in str(err.value)
    with pytest.raises(CheckpointError, match="needs init_label"):
        create_model(transfer_cfg(init="paper", weights_dir=str(tmp_path)), 2)
    with pytest.raises(CheckpointError, match="needs a BiT ResNet-v2 arch"):
        create_model(transfer_cfg(init="paper", init_label="chexpert", arch="resnet18"), 2)

    path = tmp_path / "chexpert_bittiny" / "model.pth.tar"
    save_in_authors_format(randomised(TINY, 13), path)
    full = path.read_bytes()
    path.write_bytes(full[: len(full) // 2])  # truncated download
    with pytest.raises(CheckpointError, match=rf"{path}: cannot read the authors' checkpoint for arch '{TINY}'"):
        create_model(cfg, 2)

    model = randomised(TINY, 13)
    bit_state = to_paper_state(model.state_dict())
    del bit_state["body.block2.unit01.gn1.weight"]
    bit_state["body.block5.unit01.conv1.weight"] = torch.zeros(1)
    torch.save({"model": bit_state}, path)
    with pytest.raises(CheckpointError) as err:
        read_paper_checkpoint(path, TINY)
    message = str(err.value)
    assert str(path) in message and "'resnetv2_tiny_bit'" in message
    assert "1 missing, first: body.block2.unit01.gn1.weight" in message
    assert "1 unexpected, first: body.block5.unit01.conv1.weight" in message

    save_in_authors_format(model, path)  # the tiny model's file read as an R50x1: shapes and keys disagree
    with pytest.raises(CheckpointError, match=r"does not fit arch 'resnetv2_50x1_bit'.*missing.*with another shape"):
        read_paper_checkpoint(path, "resnetv2_50x1_bit")
    torch.save({"model": model.state_dict()}, path)  # already in timm names
    with pytest.raises(CheckpointError, match="already converted"):
        read_paper_checkpoint(path, TINY)
    torch.save(torch.zeros(3), path)
    with pytest.raises(CheckpointError, match="expected a dict with a 'model' state dict"):
        read_paper_checkpoint(path, TINY)


def test_released_names_follow_the_authors_folders():
    from xrstudy.training.paper_weights import RELEASED, paper_model_name

    assert len(RELEASED) == 12 and "chexpert_mimic_nih_padchest_bit152x4" in RELEASED
    assert paper_model_name("imagenet21k", "resnetv2_50x1_bit") == "imagenet21k_bit50x1"
    assert paper_model_name("chexpert_mimic", "resnetv2_152x4_bit.some_tag") == "chexpert_mimic_bit152x4"


@pytest.mark.slow
def test_tiny_paper_init_transfer_runs_end_to_end(tmp_path):
    """A transfer cell with `init: paper` on CPU: the authors' file format in, a result JSON out."""
    from cells import shapes_study
    from cells import transfer_cfg as train_transfer_cfg

    from xrstudy.results import store
    from xrstudy.training import train

    save_in_authors_format(randomised(TINY, 13), tmp_path / "weights" / "chexpert_mimic_bittiny" / "model.pth.tar")
    cfg = train_transfer_cfg(
        tmp_path / "out", init="paper", init_label="chexpert_mimic", weights_dir=str(tmp_path / "weights")
    )
    result = train.run(cfg, study=shapes_study(tmp_path / "shapes"))
    assert result["status"] == "ok" and result["last_step"] == cfg.steps
    assert 0.0 <= result["metrics"]["test/acc"] <= 1.0
    row = store.table(cfg.results_dir).iloc[0]
    assert (row.init, row.init_label, row.origin) == ("paper", "chexpert_mimic", "xrstudy")


def test_import_paper_cli_bad_file_is_one_line_and_exit_2(tmp_path, capsys):
    from xrstudy import cli

    missing = tmp_path / "imagenet21k_bit152x4" / "model.pth.tar"
    out = tmp_path / "o.pth"
    code = cli.main(["models", "import-paper", str(missing), "--arch", "resnetv2_152x4_bit", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert f"{missing}: no such checkpoint file (arch 'resnetv2_152x4_bit')" in err
    assert not out.exists()
