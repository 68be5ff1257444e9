"""Read and merge the real NIH, CheXpert and PadChest label files (~500k rows) shipped in torchxrayvision.

    python benchmarks/bench_merge.py

Prints seconds per step (parse each file, policy + view filter, merge, patient split) measured in one
run, and the share of the total spent merging. Needs the test extra (torchxrayvision).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torchxrayvision

from xrstudy.data import labels, merge, sources, splits, studydata

FILES = {
    "nih": ("Data_Entry_2017_v2020.csv.gz", "Data_Entry_2017_v2020.csv.gz"),
    "chexpert": ("chexpert_train.csv.gz", "train.csv.gz"),
    "padchest": ("PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz",) * 2,
}


def main() -> None:
    shipped = Path(torchxrayvision.__file__).parent / "data"
    with tempfile.TemporaryDirectory() as tmp:
        roots = {}
        for name, (file, distributed) in FILES.items():
            (Path(tmp) / name).mkdir()
            (Path(tmp) / name / distributed).symlink_to(shipped / file)
            roots[name] = Path(tmp) / name
        timings, tables = {}, []
        for name, root in roots.items():
            started = time.perf_counter()
            table = sources.read_source(name, root, metadata_only=True)
            timings[f"parse {name} ({len(table):,} rows)"] = time.perf_counter() - started
            started = time.perf_counter()
            tables.append(labels.apply_policy(labels.filter_views(table, ("PA", "AP")), "ignore"))
            timings[f"views + policy {name}"] = time.perf_counter() - started
        started = time.perf_counter()
        merged = merge.merge_sources(tables, "intersection")
        timings[f"merge, intersection ({len(merged):,} rows, {len(labels.finding_columns(merged))} classes)"] = (
            time.perf_counter() - started
        )
        started = time.perf_counter()
        union = merge.merge_sources(tables, "union")
        timings[f"merge, union ({len(labels.finding_columns(union))} findings)"] = time.perf_counter() - started
        started = time.perf_counter()
        split = splits.assign_splits(merged, "official", seed=studydata.SPLIT_SEED)
        splits.split_bytes(split)
        timings["official/patient split + split file bytes"] = time.perf_counter() - started
        started = time.perf_counter()
        for name, root in roots.items():
            sources.read_source(name, root, metadata_only=True)
        timings["re-read all three (in-process table cache)"] = time.perf_counter() - started
    total = sum(v for k, v in timings.items() if not k.startswith("re-read"))
    to_merge = sum(v for k, v in timings.items() if k.startswith(("parse", "views", "merge, intersection")))
    for step, seconds in timings.items():
        print(f"{seconds:7.2f} s  {step}")
    print(f"{to_merge:7.2f} s  read + merge of the three files (parse, views + policy, intersection merge)")
    print(f"{total:7.2f} s  total, parse to split file")
    merge_only = sum(v for k, v in timings.items() if k.startswith("merge"))
    print(f"ratio merge / total = {merge_only / total:.2f}  (parsing the CSVs dominates)")


if __name__ == "__main__":
    main()
