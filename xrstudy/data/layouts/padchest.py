"""Writer of the PadChest layout read by `xrstudy.data.sources.padchest` (PadChest and PadChest-Cl), and the
rows that tell the authors' PadChest reading (label_mode paper) from the term vocabulary."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from xrstudy.data import labels
from xrstudy.data.layouts.records import Record, register_writer, save_image

# ---- PadChest: PADCHEST_..._160K_01.02.19.csv + <ImageDir>/<ImageID> 16-bit PNGs -----------------
PADCHEST_PROJECTIONS = {
    "PA": "PA",
    "AP": "AP",
    "AP_SUPINE": "AP_horizontal",
    "LATERAL": "L",
    "COSTAL": "COSTAL",
    "OTHER": "UNK",
}
# A value spanning two lines, as 5,214 rows of the real file have: line numbers are not row + 2.
LONG_CUIS = "['C0262950' 'C0223683' 'C0020164' 'C0003483' 'C0444532' 'C0448034'\n 'C0920882' 'C0025066']"


@register_writer("padchest")
def write_padchest(root: Path, records: list[Record]) -> None:
    """Findings are canonical names (written as their plain PadChest term) or PadChest terms as they
    are; `Record.raw` gives the `Labels` text itself ("" = empty) and `Record.file` the ImageID."""
    term_of = {canonical: terms[0] for canonical, terms in labels.PADCHEST_TERMS_OF.items()}
    rows = []
    for i, record in enumerate(records):
        image_id = record.file or f"{record.patient:06d}{record.study:02d}{i:06d}_demo.png"
        image_dir = i % 3
        save_image(root / str(image_dir) / image_id, record.image)
        terms = [term_of.get(k, k) for k, v in sorted(record.findings.items()) if v in (1.0, -1.0)]
        if record.label and record.label != "normal":
            terms = [term_of.get(record.label, record.label.lower())]  # PadChest-Cl: exactly one term
        text = repr(terms or ["normal"]) if record.raw is None else (record.raw or None)
        rows.append(
            {
                "ImageID": image_id,
                "ImageDir": image_dir,
                "StudyDate_DICOM": 20150101 + record.study,
                "StudyID": f"{record.patient:06d}-{record.study}",
                "PatientID": f"{record.patient:06d}",
                "PatientBirth": 2015 - record.age,
                "PatientSex_DICOM": record.sex or "O",
                "Projection": PADCHEST_PROJECTIONS[record.view],
                "MethodLabel": "Physician",
                "Labels": text,
                # numpy-style reprs as in the real file, where long ones break over two lines
                "labelCUIS": "[" + " ".join(f"'C{i:07d}'" for _ in terms) + "]",
                "LocalizationsCUIS": LONG_CUIS if i % 4 == 1 else "[]",
            }
        )
    pd.DataFrame(rows).to_csv(root / "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv", index=False)


# Rows that tell the authors' PadChest reading (label_mode paper) from the term vocabulary: their
# substring tests and synonyms, the rows they drop, the projections they read. (Labels text, view,
# file name, the 27 pathologies the authors' class marks; "" file = a made-up name.)
PADCHEST_PAPER_CASES = (
    ("['pleural effusion']", "PA", "", {"Effusion"}),
    ("['pericardial effusion']", "PA", "", {"Effusion"}),  # a substring, not the finding
    ("['consolidation']", "AP", "", {"Consolidation", "Infiltration"}),  # two pathologies: not PadChest-Cl
    ("['air bronchogram']", "PA", "", {"Consolidation", "Infiltration"}),
    ("['interstitial pattern']", "LATERAL", "", {"Infiltration"}),
    ("['electrical device']", "AP_SUPINE", "", {"Support Devices"}),
    ("['pacemaker', 'cardiomegaly']", "PA", "", {"Support Devices", "Cardiomegaly"}),
    ("['apical pleural thickening']", "COSTAL", "", {"Pleural Thickening"}),
    ("['adenopathy']", "PA", "", {"Hilar Enlargement"}),
    ("['subcutaneous emphysema']", "AP", "", {"Emphysema"}),
    ("['normal']", "PA", "", set()),
    ("['exclude']", "PA", "", set()),  # the vocabulary's unknown; the authors read it as no pathology
    ("['COPD signs']", "PA", "", set()),  # upper case: "copd" would not match
    ("['calcified granuloma']", "OTHER", "", {"Granuloma"}),  # an unknown projection: never read
    ("", "PA", "", set()),  # no labels: dropped
    ("['nodule']", "PA", "216840111366964012819207061112010307142602253_04-014-084.png", {"Nodule"}),  # excluded
    ("['scoliosis']", "LATERAL", "269300710246070740096540277379121868595_e7zsan.png", {"Scoliosis"}),  # excluded
)


def padchest_paper_records(repeat: int = 1, *, size: int = 16) -> list[Record]:
    """`PADCHEST_PAPER_CASES` as PadChest records, `repeat` times (new patients and file names each
    time, except the excluded files, which occur once): a miniature for the paper modes."""
    records = []
    for r in range(repeat):
        for i, (text, view, file, _) in enumerate(PADCHEST_PAPER_CASES):
            if file and r:
                continue
            patient = r * len(PADCHEST_PAPER_CASES) + i + 1
            image = (np.arange(size * size, dtype=np.uint32).reshape(size, size) * 257 + patient * 911) % 65535
            records.append(
                Record(
                    patient=patient,
                    study=1,
                    view=view,
                    sex="F",
                    age=60,
                    findings={},
                    split="",
                    image=image.astype(np.uint16),
                    raw=text,
                    file=file,
                )
            )
    return records
