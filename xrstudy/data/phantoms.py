"""Procedural chest-radiograph phantoms and natural-like images for the offline demo.

Each finding is drawn so a network can see it, and the label says exactly what was drawn:
Cardiomegaly widens the heart shadow, Effusion fills a costophrenic angle up to a fluid level,
Pneumothorax removes lung markings beyond a pleural line, Atelectasis is a plate-like band,
Consolidation a dense blob, Pneumonia patchy blobs, Edema a bilateral perihilar haze.

`xray_records(...)` returns `xrstudy.data.layouts.Record`s that `layouts.write_layout` turns into the
real on-disk layout of a source, so the demo reads them back through the real adapters.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from xrstudy.data.layouts import Record

DRAWN_FINDINGS = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Effusion",
    "Pneumonia",
    "Pneumothorax",
)


@dataclass(frozen=True)
class PhantomStyle:
    """Per-source acquisition differences, so sources are related but not identical domains."""

    height: int = 96
    width: int = 80
    contrast: float = 1.0
    noise: float = 0.04
    bits: int = 8


def _grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    return y / (height - 1), x / (width - 1)  # both in [0, 1]


def _ellipse(y, x, cy, cx, ry, rx) -> np.ndarray:
    return ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1.0


def _blob(y, x, cy, cx, r) -> np.ndarray:
    return np.exp(-(((y - cy) ** 2 + (x - cx) ** 2) / (2 * r * r)))


def draw_chest(findings: set[str], rng: np.random.Generator, style: PhantomStyle, view: str = "PA") -> np.ndarray:
    """A float image in [0, 1]: bright = dense (bone, heart, fluid), dark = air.

    Every image varies as patients and acquisitions do: body position and size, lung shape, heart
    size, exposure, noise; findings vary in side, extent and density. One image of a class is
    therefore one example, not a template (the demo's 1-shot cells must not be decided by it).
    """
    y, x = _grid(style.height, style.width)
    jitter = lambda s: rng.normal(0.0, s)  # noqa: E731 - tiny local helper
    img = np.full(y.shape, 0.08, np.float32)
    if view == "LATERAL":
        # A side view: one large lung field, spine at the back; findings are not drawn (filtered out).
        img[_ellipse(y, x, 0.5, 0.5, 0.42, 0.36)] = 0.55
        img[_ellipse(y, x, 0.45, 0.48, 0.32, 0.26)] = 0.22
        img[(x > 0.78) & (x < 0.86)] = 0.8
        return np.clip(img + rng.normal(0, style.noise, img.shape), 0, 1)

    # Patient positioning and habitus: the whole chest shifts and scales a little.
    dy, dx, size = jitter(0.03), jitter(0.03), 1.0 + jitter(0.05)
    body = _ellipse(y, x, 0.55 + dy, 0.5 + dx, 0.5 * size, 0.47 * size)
    img[body] = 0.55 + jitter(0.04)
    left_c = (0.45 + dy + jitter(0.015), 0.5 + dx - 0.2 * size + jitter(0.015))
    right_c = (0.45 + dy + jitter(0.015), 0.5 + dx + 0.2 * size + jitter(0.015))
    lung_r = ((0.3 + jitter(0.02)) * size, (0.15 + jitter(0.01)) * size)
    left = _ellipse(y, x, *left_c, *lung_r)
    right = _ellipse(y, x, *right_c, *lung_r)
    lungs = left | right
    img[lungs] = 0.2 + jitter(0.03)
    # Vascular markings: faint horizontal striations inside the lungs.
    markings = 0.05 * (np.sin(y * rng.uniform(50, 70) + rng.uniform(0, 6)) > 0.6)
    img = img + markings * lungs
    # Heart: bright ellipse low in the mediastinum; Cardiomegaly widens it past half the chest.
    heart_rx = ((0.22 if "Cardiomegaly" in findings else 0.12) + jitter(0.012)) * size
    heart = _ellipse(y, x, 0.62 + dy, 0.53 + dx, 0.14 * size, heart_rx)
    img[heart] = 0.75
    img[(np.abs(x - 0.5 - dx) < 0.035) & (y < 0.5 + dy)] = 0.7  # trachea / mediastinum
    # Diaphragm domes.
    img[(y > 0.78 + dy + 0.05 * np.cos((x - 0.5 - dx) * 6)) & body] = 0.7

    side = left if rng.random() < 0.5 else right
    side_c = left_c if side is left else right_c
    # Every finding's extent and density is drawn whether or not it is present, so an image with and
    # without a finding share everything else (same random stream).
    u = dict(
        zip(
            ("level", "edge", "reach", "c_dy", "c_dx", "c_den", "c_r", "n_blobs", "a_dy", "a_tilt", "e_den"),
            rng.uniform(0.0, 1.0, 11),
        )
    )
    blobs = rng.uniform(0.0, 1.0, (5, 2))
    if "Effusion" in findings:
        level = side_c[0] + lung_r[0] * (-0.1 + 0.4 * u["level"])
        meniscus = level - 0.06 * np.abs(x - side_c[1]) / lung_r[1]
        img[side & (y > meniscus)] = 0.7
    if "Pneumothorax" in findings:
        # Beyond a thin visceral pleural line the lung is collapsed: no markings, darker air.
        edge = side_c[1] + (-0.02 + 0.05 * u["edge"]) * (1 if side is right else -1)
        beyond = (x > edge) if side is right else (x < edge)
        region = side & beyond & (y < side_c[0] + 0.1 + 0.15 * u["reach"])
        img[region] = 0.06
        img[side & (np.abs(x - edge) < 0.012) & (y < side_c[0] + 0.1)] = 0.45
    if "Consolidation" in findings:
        cy, cx = side_c[0] - 0.1 + 0.25 * u["c_dy"], side_c[1] - 0.05 + 0.1 * u["c_dx"]
        img += (0.4 + 0.25 * u["c_den"]) * (_blob(y, x, cy, cx, 0.06 + 0.03 * u["c_r"]) > 0.5) * lungs
    if "Pneumonia" in findings:
        for by, bx in blobs[: 3 + int(3 * u["n_blobs"])]:
            cy, cx = side_c[0] - 0.15 + 0.35 * by, side_c[1] - 0.08 + 0.16 * bx
            img += 0.3 * _blob(y, x, cy, cx, 0.03) * lungs
    if "Atelectasis" in findings:
        cy = side_c[0] + 0.05 + 0.13 * u["a_dy"]
        band = (np.abs((y - cy) - (0.15 + 0.2 * u["a_tilt"]) * (x - side_c[1])) < 0.015) & side
        img[band] = 0.65
    if "Edema" in findings:
        # Bilateral perihilar ("bat-wing") haze.
        haze = _blob(y, x, 0.48 + dy, 0.36 + dx, 0.09) + _blob(y, x, 0.48 + dy, 0.64 + dx, 0.09)
        img += (0.25 + 0.2 * u["e_den"]) * haze * lungs

    # Exposure: contrast and brightness vary per image around the source's scanner style.
    img = 0.5 + jitter(0.03) + (img - 0.5) * style.contrast * rng.uniform(0.85, 1.15)
    img += rng.normal(0.0, style.noise * rng.uniform(0.7, 1.5), img.shape).astype(np.float32)
    return np.clip(img, 0.0, 1.0)


def to_pixels(img: np.ndarray, bits: int) -> np.ndarray:
    top = (1 << bits) - 1
    return np.round(img * top).astype(np.uint16 if bits > 8 else np.uint8)


def xray_records(
    n_patients: int,
    seed: int,
    *,
    style: PhantomStyle = PhantomStyle(),
    prevalence: float = 0.25,
    uncertain_share: float = 0.15,
    blank_share: float = 0.2,
    lateral_share: float = 0.1,
    max_findings: int = 2,
    splits: tuple[tuple[str, float], ...] = (("train", 1.0),),
) -> list[Record]:
    """Patients with 1–3 studies each; findings sampled, drawn, then labelled.

    A drawn finding is labelled 1, or -1 (uncertain) with probability `uncertain_share`; a finding
    not drawn is labelled 0, or left blank (unknown) with probability `blank_share`. Sources that
    have no uncertain label (NIH) map -1 to 1 and blank to 0 when they are written.
    """
    rng = np.random.default_rng(seed)
    split_names = [s for s, _ in splits]
    split_probs = np.array([p for _, p in splits], float)
    records = []
    for patient in range(1, n_patients + 1):
        split = split_names[rng.choice(len(split_names), p=split_probs / split_probs.sum())]
        sex, age = ("M", "F")[rng.integers(2)], int(rng.integers(20, 90))
        for study in range(1, int(rng.integers(1, 4)) + 1):
            view = "LATERAL" if rng.random() < lateral_share else ("PA", "AP")[rng.integers(2)]
            n_findings = min(rng.poisson(prevalence * len(DRAWN_FINDINGS) / 2), max_findings)
            drawn = set(rng.choice(DRAWN_FINDINGS, size=n_findings, replace=False).tolist())
            findings: dict[str, float | None] = {}
            for name in DRAWN_FINDINGS:
                if name in drawn:
                    findings[name] = -1.0 if rng.random() < uncertain_share else 1.0
                else:
                    findings[name] = None if rng.random() < blank_share else 0.0
            image = to_pixels(draw_chest(drawn, rng, style, view), style.bits)
            records.append(
                Record(
                    patient=patient,
                    study=study,
                    view=view,
                    sex=sex,
                    age=age,
                    findings=findings,
                    split=split,
                    image=image,
                )
            )
    return records


def single_finding_records(
    n_per_class: int, seed: int, *, classes: tuple[str, ...], style: PhantomStyle, test_share: float = 0.3
) -> list[Record]:
    """One positive finding per image (or none: 'normal'), PadChest-Cl style; one image per patient."""
    rng = np.random.default_rng(seed)
    records = []
    patient = 0
    for name in classes:
        for _ in range(n_per_class):
            patient += 1
            drawn = set() if name == "normal" else {name}
            findings = {f: (1.0 if f in drawn else 0.0) for f in DRAWN_FINDINGS}
            image = to_pixels(draw_chest(drawn, rng, style, "PA"), style.bits)
            split = "test" if rng.random() < test_share else "train"
            records.append(
                Record(
                    patient=patient,
                    study=1,
                    view="PA",
                    sex=("M", "F")[rng.integers(2)],
                    age=int(rng.integers(20, 90)),
                    findings=findings,
                    split=split,
                    image=image,
                    label=name,
                )
            )
    return records


# ---- natural-like images ------------------------------------------------------------------
SHAPES = ("disc", "square", "triangle", "ring", "stripes", "cross")


def draw_shape(shape: str, rng: np.random.Generator, size: int = 48) -> np.ndarray:
    """An RGB uint8 image: one coloured shape on a textured, coloured background."""
    y, x = _grid(size, size)
    background = rng.uniform(0.1, 0.9, 3)
    texture = 0.08 * np.sin(x * rng.uniform(5, 25) + y * rng.uniform(5, 25))
    img = background[None, None, :] + texture[..., None]
    cy, cx, r = rng.uniform(0.35, 0.65), rng.uniform(0.35, 0.65), rng.uniform(0.18, 0.3)
    masks = {
        "disc": lambda: (y - cy) ** 2 + (x - cx) ** 2 < r * r,
        "square": lambda: (np.abs(y - cy) < r * 0.8) & (np.abs(x - cx) < r * 0.8),
        "triangle": lambda: (y - cy > -r) & (y - cy < r) & (np.abs(x - cx) < (y - cy + r) / 2),
        "ring": lambda: np.abs(np.sqrt((y - cy) ** 2 + (x - cx) ** 2) - r * 0.8) < r * 0.2,
        "stripes": lambda: (np.sin((x + y) * rng.uniform(25, 40)) > 0.3) & (np.abs(y - cy) < r) & (np.abs(x - cx) < r),
        "cross": lambda: (
            ((np.abs(y - cy) < r * 0.25) | (np.abs(x - cx) < r * 0.25)) & (np.abs(y - cy) < r) & (np.abs(x - cx) < r)
        ),
    }
    colour = (background + rng.uniform(0.35, 0.6, 3) * rng.choice([-1, 1], 3)) % 1.0
    img[masks[shape]()] = colour
    img += rng.normal(0, 0.03, img.shape)
    return np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)


def shape_records(n_per_class: int, seed: int, *, size: int = 48, test_share: float = 0.2) -> list[Record]:
    rng = np.random.default_rng(seed)
    records = []
    for shape in SHAPES:
        for _ in range(n_per_class):
            split = "test" if rng.random() < test_share else "train"
            records.append(
                Record(
                    patient=len(records) + 1,
                    study=1,
                    view="OTHER",
                    sex="",
                    age=0,
                    findings={},
                    split=split,
                    image=draw_shape(shape, rng, size),
                    label=shape,
                )
            )
    return records


def digit_records(seed: int, *, test_share: float = 0.2) -> list[Record]:
    """scikit-learn's bundled digits (8×8, 16 grey levels) as a real, offline natural-image target."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    test = rng.random(len(digits.target)) < test_share
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)
    return [
        Record(
            patient=i + 1,
            study=1,
            view="OTHER",
            sex="",
            age=0,
            findings={},
            split="test" if test[i] else "train",
            image=images[i],
            label=str(digits.target[i]),
        )
        for i in range(len(images))
    ]
