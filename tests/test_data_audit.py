"""Leakage audit: planted overlaps in miniature PadChest / PadChest-Cl / COVIDx / NIH copies are found with
exact counts (by patient, id, file bytes and decoded pixels); the real PadChest file in paper mode gives the
authors' 10,919 patients on both sides; `sweep plan`'s leak rule is the audit's."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xrstudy import cli
from xrstudy.data import audit, layouts, studydata
from xrstudy.data.layouts import Record


def picture(seed: int, dtype=np.uint16) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 250, (16, 16)).astype(dtype)


def record(patient: int, k: int, image: np.ndarray, file: str = "", label: str = "", split: str = "train") -> Record:
    return Record(patient, k, "PA", "M", 40, {"Effusion": float(patient % 2)}, split, image, label=label, file=file)


def write_split(path: Path, source: str, rows: list[tuple[str, str]]) -> Path:
    path.write_text("source,image_id,split\n" + "".join(f"{source},{i},{s}\n" for i, s in rows))
    return path


# PadChest: patients 0-9 with three images each (p{patient}_{k}.png), and two copies of images under other
# patients' ids: copy_a = p0_0's pixels (patient 20), copy_b = p1_2's (patient 21).
PRETRAIN_SIDES = {0: "ttt", 1: "ttt", 2: "ttt", 3: "ttt", 4: "ttt", 5: "ttt", 6: "ttT", 7: "TvT", 8: "TTT", 9: "TTT"}


@pytest.fixture(scope="module")
def padchest(tmp_path_factory):
    base = tmp_path_factory.mktemp("audit")
    records = [record(p, k, picture(3 * p + k), f"p{p}_{k}.png") for p in range(10) for k in range(3)]
    records += [record(20, 0, picture(0), "copy_a.png"), record(21, 0, picture(5), "copy_b.png")]
    root = layouts.write_layout("padchest", base / "PadChest", records)
    name = {"t": "train", "v": "valid", "T": "test"}
    rows = [(f"p{p}_{k}.png", name[s]) for p, sides in PRETRAIN_SIDES.items() for k, s in enumerate(sides)]
    rows += [("copy_a.png", "test"), ("copy_b.png", "train"), ("p8_0.png", "train")]  # p8_0: on both sides
    pretrain = write_split(base / "padchest-split.csv", "padchest", rows)
    target = write_split(
        base / "padchest-cl-split.csv",
        "padchest-cl",
        [(i, "test") for i in ("p0_1.png", "p1_0.png", "p8_1.png", "p9_2.png", "copy_b.png", "copy_a.png")]
        + [("p0_2.png", "train"), ("p2_0.png", "train")],
    )
    return {"root": root, "pretrain": pretrain, "target": target, "base": base}


def by_check(report: dict) -> dict:
    return {(f["check"], f["source"]): f for f in report["findings"]}


def test_planted_patients_ids_and_copies_on_both_sides(padchest):
    report = audit.audit([padchest["pretrain"]], {"padchest": padchest["root"]}, cache_dir=None)
    found = by_check(report)
    # patients 6 (train, test), 7 (test, valid), 8 (test, and p8_0 listed again as train)
    patients = found[("patients", "padchest")]
    assert patients["count"] == 3 and patients["images"] == 3 + 3 + 4
    assert {e["patient_id"] for e in patients["examples"]} == {"padchest:000006", "padchest:000007", "padchest:000008"}
    ids = found[("image_ids", "padchest")]
    assert ids["count"] == 1 and ids["examples"] == [{"image_id": "p8_0.png", "sides": {"test": 1, "train": 1}}]
    # copy_a (test) has p0_0's bytes (train); copy_b sits on p1_2's side (train): not a leak
    content = found[("content", "padchest")]
    assert content["count"] == 1 and content["images"] == 2
    assert sorted(content["examples"][0]["images"]) == ["copy_a.png (test)", "p0_0.png (train)"]
    assert "32 of 32 files hashed (0 from the cache), 0 absent, 0 unreadable" in content["how"]
    assert report["leaks"] == 3 and report["skipped"] == []


def test_target_test_images_in_the_pretraining_rows(padchest):
    report = audit.audit([padchest["target"], padchest["pretrain"]], {"padchest": padchest["root"]})
    found = by_check(report)
    across = found[("test_in_pretraining", "padchest-cl")]
    # by id: p0_1, p1_0, copy_b are pre-training rows (train); by content also copy_a (= p0_0, train).
    # p8_1 and p9_2 are pre-training test rows: not seen.
    assert across["by"] == ["id", "content (bytes)"] and across["count"] == 4
    assert across["examples"] == ["copy_a.png", "copy_b.png", "p0_1.png", "p1_0.png"]
    assert across["patients"] == 4  # patients 0, 1, 21 (copy_b) and 8 (p8_0 listed as train)
    assert across["against"] == {"file": str(padchest["pretrain"]), "source": "padchest"}
    # PadChest-Cl's own split: patient 0 in train (p0_2) and test (p0_1)
    assert found[("patients", "padchest-cl")]["count"] == 1
    # no pair the other way: PadChest does not hold PadChest-Cl's images as a target would
    assert sum(f["check"] == "test_in_pretraining" for f in report["findings"]) == 1


def test_by_id_only_without_images(padchest, tmp_path):
    labels_only = tmp_path / "labels-only"
    labels_only.mkdir()
    name = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"
    (labels_only / name).write_bytes((padchest["root"] / name).read_bytes())
    report = audit.audit([padchest["target"], padchest["pretrain"]], {"padchest": labels_only})
    found = by_check(report)
    assert found[("test_in_pretraining", "padchest-cl")]["count"] == 3  # copy_a needs the pixels
    assert found[("patients", "padchest")]["count"] == 3 and ("content", "padchest") not in found
    assert any("content not compared (images absent under" in s for s in report["skipped"])
    report = audit.audit([padchest["pretrain"]])  # no root at all: ids only, the rest said
    assert [f["check"] for f in report["findings"]] == ["image_ids"]
    assert report["skipped"][0].endswith("patients not compared (no --root padchest=DIR: patient ids unknown)")


@pytest.fixture(scope="module")
def covidx_nih(tmp_path_factory):
    """NIH: 6 images. COVIDx: 4 train, 4 test; test 0 and 1 are NIH images 1 and 2 (same PNG bytes), test 2 is
    NIH image 3 re-encoded (same pixels, other bytes), train 0 is not an image at all."""
    base = tmp_path_factory.mktemp("covidx")
    nih = [record(p, 0, picture(100 + p, np.uint8)) for p in range(6)]
    nih_root = layouts.write_layout("nih", base / "nih", nih)
    images = [picture(100 + p, np.uint8) for p in (1, 2, 3)] + [picture(200 + i, np.uint8) for i in range(5)]
    covidx = [
        record(10 + i, 0, image, label="positive" if i % 2 else "negative", split="test" if i < 4 else "train")
        for i, image in enumerate(images)
    ]
    covidx_root = layouts.write_layout("covidx", base / "covidx", covidx)
    test_files = sorted((covidx_root / "test").iterdir())
    reencoded = test_files[2]
    Image.open(reencoded).save(reencoded, compress_level=0)
    assert reencoded.read_bytes() != next((nih_root / "images").glob("00000003_*.png")).read_bytes()
    broken = sorted((covidx_root / "train").iterdir())[0]
    broken.write_bytes(b"not a png")
    split = base / "covidx-split.csv"
    studydata.write_split("covidx", covidx_root, split, mode="official")
    return {"nih": nih_root, "covidx": covidx_root, "split": split, "broken": broken, "base": base}


def test_covidx_test_images_taken_from_nih_by_bytes_and_by_pixels(covidx_nih, tmp_path):
    roots = {"covidx": covidx_nih["covidx"], "nih": covidx_nih["nih"]}
    found = by_check(audit.audit([covidx_nih["split"]], roots, cache_dir=tmp_path / "cache"))
    across = found[("test_in_pretraining", "covidx")]
    assert across["against"] == {"file": None, "source": "nih"}  # no NIH split file: every NIH image
    assert across["by"] == ["content (bytes)"] and across["count"] == 2 and "patients" not in across
    pixels = audit.audit([covidx_nih["split"]], roots, content="pixels", cache_dir=tmp_path / "cache")
    assert by_check(pixels)[("test_in_pretraining", "covidx")]["count"] == 3  # the re-encoded copy too
    content = by_check(pixels)[("content", "covidx")]
    assert len(content["unreadable"]) == 1 and content["unreadable"][0].startswith(str(covidx_nih["broken"]))
    # label files only: COVIDx renames the images it took, so nothing can be matched, and the report says why
    offline = audit.audit([covidx_nih["split"]], roots, metadata_only=True)
    across = by_check(offline)[("test_in_pretraining", "covidx")]
    assert across["count"] is None and "name images differently" in across["reason"]
    assert offline["leaks"] == 0 and any("not checkable" in s for s in offline["skipped"])


def test_hashes_are_cached_and_refreshed_when_a_file_changes(covidx_nih, tmp_path):
    paths = sorted(str(p) for p in (covidx_nih["nih"] / "images").iterdir())
    first = audit.content_digests(paths, cache_dir=tmp_path)
    again = audit.content_digests(paths, cache_dir=tmp_path)
    assert again.digests == first.digests and (first.from_cache, again.from_cache) == (0, len(paths))
    changed = tmp_path / "copy.png"
    changed.write_bytes(Path(paths[0]).read_bytes())
    before = audit.content_digests([str(changed)], cache_dir=tmp_path).digests[str(changed)]
    changed.write_bytes(Path(paths[1]).read_bytes())
    os.utime(changed, ns=(1, 1))
    after = audit.content_digests([str(changed)], cache_dir=tmp_path)
    assert after.from_cache == 0 and after.digests[str(changed)] == first.digests[paths[1]] != before
    with (tmp_path / "content-bytes.tsv").open("a") as handle:
        handle.write("/cut/short\t12")  # an interrupted append: skipped on reading
    assert audit.content_digests(paths, cache_dir=tmp_path).from_cache == len(paths)


def test_cli_prints_one_line_per_finding_and_fails_on_leak(padchest, capsys):
    argv = [
        "data",
        "audit",
        str(padchest["target"]),
        str(padchest["pretrain"]),
        "--root",
        f"padchest={padchest['root']}",
    ]
    assert cli.main([*argv, "--cache-dir", str(padchest["base"] / "cache")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert any(
        line.startswith(f"{padchest['pretrain']} padchest: 3 patients on more than one side (10 images)")
        for line in out
    )
    assert any(
        "padchest-cl: 4 test images in" in line and "(by id and content (bytes)); 4 test patients" in line
        for line in out
    )
    assert out[-1].startswith("7 checks, 5 with a leak; 0 skipped")
    assert cli.main([*argv, "--content", "none", "--fail-on-leak", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["leaks"] == 4 and report["sources"]["padchest"]["images"] is True


def test_bad_split_files_are_one_line_errors(tmp_path, capsys):
    (tmp_path / "a.csv").write_text("source,image_id\npadchest,x.png\n")
    (tmp_path / "b.csv").write_text("source,image_id,split\npadchest,x.png,train\npadchest,y.png,tst\n")
    (tmp_path / "c.csv").write_text("source,image_id,split\npadchest,,train\n")
    expected = {
        "a.csv": "a.csv, line 1: missing column(s) ['split']",
        "b.csv": "b.csv, line 3, column 'split': 'tst'; expected one of ['train', 'valid', 'test']",
        "c.csv": "c.csv, line 2, column 'image_id': blank",
        "none.csv": "none.csv: no such split file",
    }
    for name, message in expected.items():
        assert cli.main(["data", "audit", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.splitlines()) == 1 and err.startswith("xrstudy: error: ")


def test_init_leak_is_the_plans_rule():
    assert audit.init_leak("covidx", ["chexpert", "mimic", "nih", "padchest"]) == ["nih"]
    assert audit.init_leak("padchest-cl", ("chexpert", "padchest")) == ["padchest"]
    assert audit.init_leak("padchest", ["padchest"]) == ["padchest"]
    assert audit.init_leak("cifar10", ["imagenet21k"]) == [] and audit.init_leak("tuberculosis", ["nih"]) == []
    assert audit.same_ids("padchest-cl", "padchest") and not audit.same_ids("covidx", "nih")


# ---- the real PadChest label file (torchxrayvision's copy) -------------------------------------------
@pytest.mark.realdata
def test_real_padchest_paper_split_puts_10919_patients_on_both_sides(tmp_path, capsys):
    txv = pytest.importorskip("torchxrayvision")
    name = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz"
    shipped = Path(txv.__file__).parent / "data" / name
    if not shipped.is_file():
        pytest.skip(f"{name} not in this torchxrayvision wheel")
    root = tmp_path / "padchest"
    root.mkdir()
    (root / name).symlink_to(shipped)
    split = tmp_path / "paper.csv"
    views = "PA,AP,AP_SUPINE,LATERAL,COSTAL"
    argv = ["data", "split", "padchest", "--root", str(root), "--metadata-only", "--mode", "paper", "--views", views]
    assert cli.main([*argv, "--out", str(split)]) == 0
    capsys.readouterr()
    argv = ["data", "audit", str(split), "--root", f"padchest={root}", "--metadata-only", "--json"]
    assert cli.main(argv) == 0
    found = by_check(json.loads(capsys.readouterr().out))
    assert found[("patients", "padchest")]["count"] == 10_919  # README, docs/PROTOCOL.md: the authors' leak
    assert found[("image_ids", "padchest")]["count"] == 0
