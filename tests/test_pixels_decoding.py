"""`xrstudy.pixels.decoding`: 8- and 16-bit PNG, JPEG, DICOM (the real RG1_UNCR.dcm), CIFAR members, the
centre crop, and unreadable files named in an ImageError."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from helpers import noise, save_array, sixteen_bit_gradient, truncated_jpeg
from PIL import Image

from xrstudy.pixels.decoding import ImageError, load_image, prepare_image


def test_8bit_png_grey_is_scaled_by_255(tmp_path: Path) -> None:
    pixels = noise(1, (20, 30))
    image = load_image(save_array(pixels, tmp_path / "grey.png"))
    assert image.dtype == np.float32 and image.shape == (20, 30)
    np.testing.assert_allclose(image, pixels / 255.0, atol=1e-7)


def test_8bit_jpeg_rgb(tmp_path: Path) -> None:
    pixels = np.full((24, 32, 3), (200, 100, 50), dtype=np.uint8)
    image = load_image(save_array(pixels, tmp_path / "colour.jpg", quality=95))
    assert image.shape == (24, 32, 3) and 0.0 <= image.min() and image.max() <= 1.0
    np.testing.assert_allclose(image.mean(axis=(0, 1)), np.array([200, 100, 50]) / 255.0, atol=0.02)


def test_16bit_png_keeps_values_above_255(tmp_path: Path) -> None:
    path, values = sixteen_bit_gradient(tmp_path / "padchest.png")
    assert Image.open(path).mode in ("I;16", "I")
    image = load_image(path)
    assert image.shape == values.shape
    np.testing.assert_allclose(image, values / 65535.0, atol=1e-6)
    assert len(np.unique(image)) > 256  # more levels than 8 bits can hold
    # Clipping to 8 bits first would saturate almost everything at 255; scaling keeps the gradient.
    prepared = prepare_image(path, 16, "L")
    assert prepared.min() < 20 and prepared.max() > 235
    assert np.all(np.diff(prepared.astype(int).ravel()) >= 0)


def test_rgb_source_as_l_is_luminance(tmp_path: Path) -> None:
    path = save_array(np.full((8, 8, 3), (200, 100, 50), dtype=np.uint8), tmp_path / "colour.png")
    grey = prepare_image(path, 4, "L")
    assert grey.shape == (4, 4) and grey.dtype == np.uint8
    assert np.all(np.abs(grey.astype(int) - round(0.299 * 200 + 0.587 * 100 + 0.114 * 50)) <= 1)


def test_grey_source_as_rgb_is_copied_to_3_channels(tmp_path: Path) -> None:
    path = save_array(noise(2, (16, 16)), tmp_path / "grey.png")
    colour = prepare_image(path, 8, "RGB")
    assert colour.shape == (8, 8, 3)
    for channel in range(3):
        np.testing.assert_array_equal(colour[..., channel], prepare_image(path, 8, "L"))


def test_palette_and_rgba_sources_become_rgb(tmp_path: Path) -> None:
    rgb = noise(3, (10, 10, 3))
    palette = Image.fromarray(rgb).convert("P")
    palette.save(tmp_path / "palette.png")
    rgba = np.dstack([rgb, np.full((10, 10), 255, np.uint8)])
    assert load_image(tmp_path / "palette.png").shape == (10, 10, 3)
    np.testing.assert_allclose(load_image(save_array(rgba, tmp_path / "rgba.png")), rgb / 255.0, atol=1e-7)


def test_dicom_chest_radiograph(rg1_uncr: str) -> None:
    import pydicom

    image = load_image(rg1_uncr)
    dataset = pydicom.dcmread(rg1_uncr)
    assert dataset.PhotometricInterpretation == "MONOCHROME1"
    assert image.ndim == 2 and image.shape == (dataset.Rows, dataset.Columns)
    assert 0.0 <= image.min() and image.max() <= 1.0
    assert image.std() > 0.05 and image.max() - image.min() > 0.5  # a radiograph, not a flat field
    # MONOCHROME1: stored 0 is white, so the result is 1 - stored / (2**BitsStored - 1); no window.
    expected = 1.0 - dataset.pixel_array / (2.0**dataset.BitsStored - 1)
    np.testing.assert_allclose(image, expected, atol=1e-6)
    assert prepare_image(rg1_uncr, 32, "L").shape == (32, 32)


def test_dicom_monochrome2_is_not_inverted(rg1_uncr: str, tmp_path: Path) -> None:
    import pydicom

    dataset = pydicom.dcmread(rg1_uncr)
    dataset.PhotometricInterpretation = "MONOCHROME2"
    copy = tmp_path / "flipped.dcm"
    dataset.save_as(copy)
    np.testing.assert_allclose(load_image(copy), 1.0 - load_image(rg1_uncr), atol=1e-6)


def test_cifar_batch_member(tmp_path: Path) -> None:
    data = noise(4, (5, 3 * 32 * 32))
    batch = tmp_path / "data_batch_1"
    batch.write_bytes(pickle.dumps({b"data": data, b"labels": [0, 1, 2, 3, 4]}, protocol=2))
    expected = data[2].reshape(3, 32, 32).transpose(1, 2, 0)
    np.testing.assert_allclose(load_image(f"{batch}#2"), expected / 255.0, atol=1e-7)
    np.testing.assert_array_equal(prepare_image(f"{batch}#2", 32, "RGB"), expected)
    with pytest.raises(ImageError, match="out of range"):
        load_image(f"{batch}#5")


def test_centre_crop_keeps_the_centre(tmp_path: Path) -> None:
    wide = np.zeros((40, 120), dtype=np.uint8)
    wide[:, 40:80] = 255  # the centre square is white, the sides black
    tall = wide.T.copy()
    for array, name in ((wide, "wide.png"), (tall, "tall.png")):
        path = save_array(array, tmp_path / name)
        np.testing.assert_array_equal(prepare_image(path, 40, "L"), np.full((40, 40), 255, np.uint8))
        assert prepare_image(path, 10, "L").min() == 255


def _unreadable(folder: Path, kind: str) -> str:
    if kind == "truncated jpeg":
        return truncated_jpeg(folder / "cut.jpg")
    path = folder / {"empty png": "empty.png", "missing": "nowhere.png", "not an image": "notes.png"}[kind]
    if kind == "empty png":
        path.write_bytes(b"")
    elif kind == "not an image":
        path.write_text("hello")
    return str(path)


@pytest.mark.parametrize("kind", ["truncated jpeg", "empty png", "missing", "not an image"])
def test_unreadable_input_raises_image_error_naming_the_file(tmp_path: Path, kind: str) -> None:
    path = _unreadable(tmp_path, kind)
    with pytest.raises(ImageError) as caught:
        load_image(path)
    assert isinstance(caught.value, ValueError) and caught.value.path == path
    assert path in str(caught.value) and "expected" in str(caught.value)
