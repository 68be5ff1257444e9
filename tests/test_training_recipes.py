"""BiT-HyperRule and the pre-training schedule against the paper's table (docs/PROTOCOL.md) and the authors' code
(bit_hyperrule.py, lr_scheduler/builder.py), and what a cell needs from the machine."""

from __future__ import annotations

import pytest

from xrstudy.config import RunConfig
from xrstudy.training.recipes import (
    bit_hyperrule,
    cache_bytes,
    lr_at,
    pretrain_lr,
    pretrain_schedule,
    ram_per_rank,
    recipe_for,
    steps_per_epoch,
    transfer_lr,
)


@pytest.mark.parametrize(
    "train_size, steps, boundaries, mixup",
    [
        (1, 500, (100, 200, 300, 400), 0.0),
        (19_999, 500, (100, 200, 300, 400), 0.0),
        (20_000, 10_000, (500, 3_000, 6_000, 9_000), 0.1),
        (499_999, 10_000, (500, 3_000, 6_000, 9_000), 0.1),
        (500_000, 20_000, (500, 6_000, 12_000, 18_000), 0.1),
        (1_281_167, 20_000, (500, 6_000, 12_000, 18_000), 0.1),
    ],
)
def test_hyperrule_schedule_table(train_size, steps, boundaries, mixup):
    rule = bit_hyperrule(train_size, (224, 224))
    assert (rule.steps, rule.boundaries, rule.mixup_alpha) == (steps, boundaries, mixup)
    assert rule.warmup == boundaries[0] and rule.decays == boundaries[1:]


@pytest.mark.parametrize(
    "image_hw, resize, crop",
    [((32, 32), 160, 128), ((95, 96), 160, 128), ((96, 96), 512, 480), ((500, 375), 512, 480)],
)
def test_hyperrule_resolution(image_hw, resize, crop):
    """bit_hyperrule.get_resolution: area < 96 * 96 -> (160, 128), else (512, 480)."""
    rule = bit_hyperrule(50_000, image_hw)
    assert (rule.resize, rule.crop) == (resize, crop)


def test_overridden_steps_keep_the_shape():
    rule = bit_hyperrule(1_000, (32, 32), steps=50)
    assert rule.steps == 50 and rule.boundaries == (10, 20, 30, 40)
    rule = bit_hyperrule(100_000, (32, 32), steps=100)
    assert rule.boundaries == (5, 30, 60, 90)


def test_transfer_lr_is_bits_get_lr_step_for_step():
    """big_transfer / the authors' bit_hyperrule.get_lr: base * step / 100 in warm-up (step 0 at LR 0),
    then /10 once the step is past each boundary."""
    lrs = [lr_at(s, 1.0, warmup=100, decays=(200, 300, 400)) for s in range(500)]
    assert lrs[0] == 0.0 and lrs[1] == pytest.approx(0.01) and lrs[99] == pytest.approx(0.99)
    assert lrs[100] == 1.0 and lrs[200] == 1.0 and lrs[201] == pytest.approx(0.1)
    assert lrs[300] == pytest.approx(0.1) and lrs[301] == pytest.approx(0.01) and lrs[499] == pytest.approx(0.001)
    assert all(a <= b for a, b in zip(lrs[:100], lrs[1:101]))


def test_pretrain_lr_is_the_authors_goyal_warmup():
    """adjust_learning_rate_step with K = 64 GPUs (global batch 1,024): the warm-up starts at LR / 64
    and reaches LR at the end of epoch 15; x0.1 from epochs 30, 60, 80 on."""
    per_epoch = 10
    paper = pretrain_schedule(90 * per_epoch, pretrain_lr(1024), global_batch=1024)
    assert paper.rule == "goyal" and paper.warmup_start == pytest.approx(1 / 64)
    assert paper.base_lr == pytest.approx(0.04)

    def theirs(epoch: int, batch_idx: int) -> float:  # their formula, with hvd.size() = 64
        k = 64
        if epoch < 15:
            e = epoch + (batch_idx + 1) / per_epoch
            return 0.01 * 16 / 256 * k * (1 / k * (e * (k - 1) / 15 + 1))
        return 0.01 * 16 / 256 * k * (1.0 if epoch < 30 else 0.1 if epoch < 60 else 0.01 if epoch < 80 else 0.001)

    for step in (0, 1, 9, 10, 149, 150, 299, 300, 599, 600, 799, 800, 899):
        assert paper.lr_at(step) == pytest.approx(theirs(step // per_epoch, step % per_epoch)), step
    one_gpu = pretrain_schedule(90, 0.1, global_batch=16)  # their code on one GPU: no warm-up at all
    assert one_gpu.lr_at(0) == pytest.approx(0.1)


def test_lr_scaling():
    assert pretrain_lr(256) == pytest.approx(0.01) and pretrain_lr(4096) == pytest.approx(0.16)
    assert transfer_lr(128) == pytest.approx(0.001) and transfer_lr(512) == pytest.approx(0.004)
    assert steps_per_epoch(1000, 256) == 4 and steps_per_epoch(3, 256) == 1


def test_hyperrule_is_a_pure_function_of_its_inputs():
    assert bit_hyperrule(19_999, (96, 96)) == bit_hyperrule(19_999, (96, 96))
    rule = bit_hyperrule(0, (28, 28))
    assert (rule.steps, rule.resize, rule.crop, rule.mixup_alpha) == (500, 160, 128, 0.0)
    with pytest.raises(ValueError, match="train_size"):
        bit_hyperrule(-1, (32, 32))
    with pytest.raises(ValueError, match="total_steps"):
        pretrain_schedule(0, 0.1)


def test_recipes_name_their_pipeline():
    """BiT targets cache the whole image squashed (evaluation resizes to crop x crop) and crop it
    aspect-true; pre-training and PadChest-Cl use the X-ray centre square at 224 and validate
    (pre-training) every data epoch."""
    bit = recipe_for(RunConfig(kind="transfer", target="t"), 3_000, (375, 500))
    assert (bit.cache_fit, bit.augment, bit.rule, bit.valid_every) == ("squash", "bit", "bit", 0)
    xray = recipe_for(RunConfig(kind="transfer", target="t"), 3_000, (0, 0), pipeline="xray")
    assert (xray.cache_fit, xray.augment, xray.crop, xray.resize) == ("centre", "xray", 224, 224)
    pre = recipe_for(RunConfig(kind="pretrain", sources=("c",), batch_size=1024), 873_000, (0, 0), pipeline="xray")
    assert pre.valid_every == 853 and pre.steps == 90 * 853 and pre.rule == "goyal"
    assert pre.schedule.lr_at(0) == pytest.approx(0.04 * (1 / 64 + (63 / 64) / pre.warmup))


def test_machine_needs_are_pure_numbers():
    assert cache_bytes(873_000, 224, "L") == 873_000 * 224 * 224
    assert cache_bytes(10, 32, "RGB:squash") == 10 * 32 * 32 * 3
    small, large = (ram_per_rank(n, 224 * 224, 16) for n in (10_000, 1_000_000))
    assert 0 < small < large < small + 0.1 * cache_bytes(1_000_000, 224, "L")  # not the pixels (goal <= 0.1)
    assert ram_per_rank(10, 100, 8, model_params=1000) - ram_per_rank(10, 100, 8) == 8000
