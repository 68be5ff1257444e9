"""The demo's phantoms: each finding's label matches something visibly drawn where it should be."""

from __future__ import annotations

import numpy as np
import pytest

from xrstudy.data import phantoms
from xrstudy.data.phantoms import DRAWN_FINDINGS, PhantomStyle, draw_chest

CLEAN = PhantomStyle(noise=0.0)  # no noise: differences come from the finding alone


def _pair(finding: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The same patient drawn with and without one finding (same random stream up to the finding)."""
    return (
        draw_chest({finding}, np.random.default_rng(seed), CLEAN),
        draw_chest(set(), np.random.default_rng(seed), CLEAN),
    )


@pytest.mark.parametrize("finding", DRAWN_FINDINGS)
@pytest.mark.parametrize("seed", range(4))
def test_every_finding_changes_the_image_inside_the_chest(finding, seed):
    with_finding, without = _pair(finding, seed)
    diff = with_finding - without
    changed = np.abs(diff) > 1e-3
    assert changed.sum() > 10, f"{finding} drew (almost) nothing"
    h, w = diff.shape
    rows, cols = np.nonzero(changed)
    assert rows.min() > 0.05 * h and cols.min() > 0.02 * w and cols.max() < 0.98 * w


@pytest.mark.parametrize("seed", range(4))
def test_cardiomegaly_widens_the_heart_and_pneumothorax_darkens_the_lung(seed):
    big, normal = _pair("Cardiomegaly", seed)
    row = int(0.62 * (big.shape[0] - 1))
    assert (big[row] >= 0.74).sum() > 1.4 * (normal[row] >= 0.74).sum()
    collapsed, normal = _pair("Pneumothorax", seed)
    assert (collapsed < 0.1).sum() > (normal < 0.1).sum() + 20
    fluid, normal = _pair("Effusion", seed)
    assert (fluid - normal)[int(0.55 * fluid.shape[0]) :].sum() > 5  # fluid lies in the lower chest


def test_records_label_what_was_drawn_and_hold_several_images_per_patient():
    records = phantoms.xray_records(40, seed=0, style=PhantomStyle(), uncertain_share=0.2, blank_share=0.2)
    patients = [r.patient for r in records]
    assert len(set(patients)) == 40 and len(records) > 40  # several studies per patient
    values = [v for r in records for v in r.findings.values()]
    assert {1.0, 0.0, -1.0, None} <= set(values)  # positives, negatives, uncertain and blank
    assert {"PA", "AP", "LATERAL"} <= {r.view for r in records}
    assert all(r.image.dtype == np.uint8 and r.image.shape == (96, 80) for r in records)
    again = phantoms.xray_records(40, seed=0, style=PhantomStyle(), uncertain_share=0.2, blank_share=0.2)
    assert all(np.array_equal(a.image, b.image) and a.findings == b.findings for a, b in zip(records, again))


def test_sixteen_bit_style_and_single_finding_records():
    records = phantoms.single_finding_records(3, seed=1, classes=("normal", "Effusion"), style=PhantomStyle(bits=16))
    assert {r.label for r in records} == {"normal", "Effusion"}
    assert all(r.image.dtype == np.uint16 and r.image.max() > 255 for r in records)
    effusion = [r for r in records if r.label == "Effusion"]
    assert all(r.findings["Effusion"] == 1.0 and sum(v == 1.0 for v in r.findings.values()) == 1 for r in effusion)


def test_natural_images_and_digits():
    shapes = phantoms.shape_records(2, seed=0)
    assert {r.label for r in shapes} == set(phantoms.SHAPES)
    assert all(r.image.shape == (48, 48, 3) and r.image.dtype == np.uint8 for r in shapes)
    digits = phantoms.digit_records(seed=0)
    assert len(digits) == 1797 and {r.label for r in digits} == {str(d) for d in range(10)}
    assert {r.split for r in digits} == {"train", "test"}
