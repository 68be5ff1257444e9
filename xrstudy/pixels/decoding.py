"""Decoding one image file into study pixels: 8/16-bit PNG / JPEG / TIFF, DICOM (by BitsStored), members
of CIFAR's pickled batches (`FILE#N`), as grayscale or colour in [0, 1], and `prepare_image`: centre
square crop (or the whole image for ":squash" modes), antialiased resize, uint8 -- what one slot of
the image cache (`xrstudy.pixels.imagecache`) holds. A file that cannot be decoded is an `ImageError` naming it.
"""

from __future__ import annotations

import functools
import os

import numpy as np
from PIL import Image, UnidentifiedImageError

from xrstudy.pickles import DatasetPickleError, load_dataset_pickle

MODES = ("L", "RGB", "L:squash", "RGB:squash")  # colour, then ":squash" = whole image, aspect not kept
RESAMPLE = Image.Resampling.BILINEAR  # PIL's reducing BILINEAR is antialiased, like torchvision's Resize
DICOM_SUFFIXES = (".dcm", ".dicom")
CIFAR_SIDE = 32

_EIGHT_BIT_GREY = ("1", "L", "LA")
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_COLOUR = ("RGB", "RGBA", "RGBX", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV")


class ImageError(ValueError):
    """An input that cannot be decoded as an image; names the file and what was expected."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


# ---- decoding ---------------------------------------------------------------------------------
def _member(path: str) -> tuple[str, int] | None:
    """("batch file", index) for a CIFAR member path ``FILE#N``; None for an ordinary file."""
    base, sep, index = path.rpartition("#")
    # A real file whose name contains '#' wins over the member reading.
    if not sep or not index.isdigit() or os.path.exists(path):
        return None
    return base, int(index)


@functools.lru_cache(maxsize=4)
def _cifar_batch(path: str) -> np.ndarray:
    """The b"data" array (N x 3072, channel-major) of one CIFAR python batch, once per process."""
    batch = load_dataset_pickle(path)  # restricted: a pickle naming anything else is refused, not run
    data = np.asarray(batch[b"data"], dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3 * CIFAR_SIDE * CIFAR_SIDE:
        raise ValueError(f"b'data' has shape {data.shape}, expected N x {3 * CIFAR_SIDE * CIFAR_SIDE}")
    return data


def _decode_member(path: str, base: str, index: int) -> Image.Image:
    if not os.path.exists(base):
        raise ImageError(path, f"CIFAR batch file {base} not found (expected FILE#N with FILE a CIFAR python batch)")
    try:
        data = _cifar_batch(base)
    except DatasetPickleError as error:  # its message names the batch file
        raise ImageError(path, f"expected a CIFAR python batch with key b'data': {error}") from None
    except (OSError, KeyError, TypeError, ValueError, AttributeError) as error:
        raise ImageError(path, f"expected a CIFAR python batch with key b'data' in {base}: {error}") from None
    if index >= len(data):
        raise ImageError(path, f"index {index} out of range: the CIFAR batch {base} holds {len(data)} images")
    pixels = data[index].reshape(3, CIFAR_SIDE, CIFAR_SIDE).transpose(1, 2, 0)
    return Image.fromarray(np.ascontiguousarray(pixels), "RGB")


def _is_dicom(path: str) -> bool:
    if path.lower().endswith(DICOM_SUFFIXES):
        return True
    with open(path, "rb") as handle:
        return handle.read(132)[128:] == b"DICM"  # DICOM Part 10: 128-byte preamble, then "DICM"


def _decode_dicom(path: str) -> Image.Image:
    """Float image in [0, 1]: stored values / (2**BitsStored - 1), MONOCHROME1 inverted, no window."""
    import pydicom  # only X-ray sources in DICOM need it
    from pydicom.errors import InvalidDicomError

    try:
        dataset = pydicom.dcmread(path)
        pixels = dataset.pixel_array
        photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2"))
        bits = int(dataset.get("BitsStored", 8 * pixels.itemsize))
        signed = int(dataset.get("PixelRepresentation", 0)) == 1
    except (InvalidDicomError, AttributeError, KeyError, ValueError, RuntimeError, OSError, EOFError) as error:
        raise ImageError(path, f"expected a DICOM file with pixel data: {error}") from error
    if pixels.ndim != 2 or not photometric.startswith("MONOCHROME"):
        raise ImageError(path, f"expected a single-frame MONOCHROME1/2 DICOM, got {photometric} {pixels.shape}")
    values = pixels.astype(np.float32)
    if signed:  # shift two's complement values to the unsigned range so 0 stays the darkest value
        values += 2.0 ** (bits - 1)
    values = np.clip(values / (2.0**bits - 1.0), 0.0, 1.0)
    if photometric == "MONOCHROME1":  # 0 is white in MONOCHROME1
        values = 1.0 - values
    return Image.fromarray(values.astype(np.float32), "F")


def _decode_pil(path: str) -> Image.Image:
    """PIL image in mode L, RGB, or I;16/I (16-bit grayscale, kept at full depth)."""
    try:
        with Image.open(path) as image:
            image.load()  # decode now so truncated files fail here, not later
            if image.mode in _SIXTEEN_BIT or image.mode in ("L", "RGB"):
                return image.copy()
            if image.mode in _EIGHT_BIT_GREY:
                return image.convert("L")
            if image.mode in _COLOUR:
                return image.convert("RGB")
            raise ImageError(path, f"unsupported PIL mode {image.mode!r}; expected 8-bit L/RGB/P or 16-bit grayscale")
    except UnidentifiedImageError as error:
        raise ImageError(path, "not an image: expected a JPEG, PNG or DICOM file") from error
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        if isinstance(error, ImageError):
            raise
        raise ImageError(path, f"corrupt or truncated image (expected a readable JPEG/PNG): {error}") from error


def _decode(path: str | os.PathLike[str]) -> Image.Image:
    """One image as PIL: L or RGB (8-bit), I;16 or I (16-bit grey), or F (float in [0, 1], DICOM)."""
    path = str(path)
    member = _member(path)
    if member is not None:
        return _decode_member(path, *member)
    if not os.path.isfile(path):  # stat only: opening a FIFO would block
        found = "file not found" if not os.path.exists(path) else "not a regular file"
        raise ImageError(path, f"{found} (expected an image file, or FILE#N for a CIFAR batch member)")
    try:
        if os.path.getsize(path) == 0:
            raise ImageError(path, "empty file (0 bytes); expected a JPEG, PNG or DICOM image")
        dicom = _is_dicom(path)
    except OSError as error:
        raise ImageError(path, f"cannot read the file (expected an image file): {error}") from error
    return _decode_dicom(path) if dicom else _decode_pil(path)


def _scaled(image: Image.Image) -> np.ndarray:
    """float32 pixels in [0, 1] of a decoded image: 8-bit / 255, 16-bit / 65535, float as is."""
    if image.mode in ("L", "RGB"):
        return np.asarray(image, dtype=np.float32) / 255.0
    if image.mode in _SIXTEEN_BIT:
        return np.asarray(image, dtype=np.float32) / 65535.0
    return np.asarray(image, dtype=np.float32)


def load_image(path: str | os.PathLike[str]) -> np.ndarray:
    """float32 in [0, 1]: H x W for a grayscale source, H x W x 3 for a colour one."""
    return _scaled(_decode(path))


def centre_square(width: int, height: int) -> tuple[int, int, int, int]:
    """PIL box (left, top, right, bottom) of the largest centred square."""
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values * 255.0), 0, 255).astype(np.uint8)


def prepare_image(path: str | os.PathLike[str], size: int, mode: str) -> np.ndarray:
    """Decode, centre crop to a square, antialiased resize to size x size, uint8.

    mode "L" gives size x size (a colour source becomes luminance), "RGB" size x size x 3 (a grayscale
    source is copied to 3 channels); with ":squash" the whole image is resized (no crop). 16-bit and
    DICOM sources are resized in float, so their extra depth contributes to the rounded 8-bit result.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    colour, _, fit = mode.partition(":")
    image = _decode(path)
    if colour == "L" and image.mode == "RGB":
        image = image.convert("L")  # ITU-R 601-2 luminance
    if fit != "squash":
        # Crop, then resize: resize(box=...) would let the filter reach past the square into the sides.
        image = image.crop(centre_square(*image.size))
    if image.mode in ("L", "RGB"):
        pixels = np.asarray(image.resize((size, size), RESAMPLE))
    else:  # 16-bit or float: resize in float so no depth is lost before the final rounding
        grey = Image.fromarray(_scaled(image), "F")
        pixels = _to_uint8(np.asarray(grey.resize((size, size), RESAMPLE)))
    if colour == "RGB" and pixels.ndim == 2:
        pixels = np.repeat(pixels[:, :, None], 3, axis=2)
    return np.ascontiguousarray(pixels, dtype=np.uint8)


def original_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(height, width) of an image from its header (no pixel decoding); (0, 0) when unreadable."""
    path = str(path)
    if _member(path) is not None:
        return CIFAR_SIDE, CIFAR_SIDE
    try:
        if _is_dicom(path):
            import pydicom

            header = pydicom.dcmread(path, stop_before_pixels=True)
            return int(header.Rows), int(header.Columns)
        with Image.open(path) as image:
            return image.height, image.width
    except Exception:  # noqa: BLE001 - an unreadable file is quarantined by the build; here it is square
        return 0, 0


__all__ = ["ImageError", "MODES", "load_image", "prepare_image", "original_size", "centre_square"]
