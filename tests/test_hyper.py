"""BiT-HyperRule and the pre-training schedule against the table in STUDY.md."""

from __future__ import annotations

import pytest

from xrstudy.hyper import (
    bit_hyperrule,
    lr_at,
    pretrain_lr,
    pretrain_schedule,
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
    [((32, 32), 160, 128), ((96, 96), 160, 128), ((97, 96), 512, 480), ((500, 375), 512, 480)],
)
def test_hyperrule_resolution(image_hw, resize, crop):
    rule = bit_hyperrule(50_000, image_hw)
    assert (rule.resize, rule.crop) == (resize, crop)


def test_overridden_steps_keep_the_shape():
    rule = bit_hyperrule(1_000, (32, 32), steps=50)
    assert rule.steps == 50 and rule.boundaries == (10, 20, 30, 40)
    rule = bit_hyperrule(100_000, (32, 32), steps=100)
    assert rule.boundaries == (5, 30, 60, 90)


def test_lr_warmup_then_step_decay():
    lrs = [lr_at(s, 1.0, warmup=100, decays=(200, 300, 400)) for s in range(500)]
    assert lrs[0] == pytest.approx(0.01) and lrs[99] == pytest.approx(1.0)
    assert lrs[199] == 1.0 and lrs[200] == pytest.approx(0.1)
    assert lrs[300] == pytest.approx(0.01) and lrs[499] == pytest.approx(0.001)
    assert all(a <= b for a, b in zip(lrs[:100], lrs[1:100]))


def test_pretrain_schedule_is_fractions_of_the_run():
    paper = pretrain_schedule(90, 0.1)
    assert (paper.warmup, paper.decays) == (15, (30, 60, 80))
    demo = pretrain_schedule(18, 0.1)
    assert (demo.warmup, demo.decays) == (3, (6, 12, 16))
    assert demo.lr_at(5) == pytest.approx(0.1) and demo.lr_at(6) == pytest.approx(0.01)
    assert pretrain_schedule(1, 0.1).lr_at(0) == pytest.approx(0.1)


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
