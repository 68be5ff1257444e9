"""Leakage audit of split files: what a test set shares with the data a model was trained or pre-trained on.

    xrstudy data audit SPLIT_FILE [...] [--root NAME=DIR ...] [--content bytes|pixels|none] [--json]

A split file is what `xrstudy.data.splits.save_split` writes (`source,image_id,split`, one row per
image). Per split file and source, `audit` counts
- `patients`: patients with images on more than one side (train / valid / test). Patient ids come from
  the source's label files (`--root NAME=DIR`); without them this check is skipped and says so. The
  paper's PadChest split (image-level 90/10) puts 10,919 patients on both sides (five views).
- `image_ids`: one image id listed on more than one side.
- `content`: one image (equal content, under two ids) on more than one side. Content is the file's bytes
  (`bytes`, fast) or its decoded pixels (`pixels`: the same picture re-encoded, e.g. PNG vs lossless
  TIFF, still matches; a resized or lossy copy does not). Only images present on disk are hashed
  (label-only roots: skipped, said so); an unreadable image is counted and shown, never fatal.
And per pair (a target, a source an init was pre-trained on) that `init_leak` names (the target itself,
or a dataset whose images the target holds: `Source.shares_images_with`, e.g. COVIDx holds NIH images
through RSNA, PadChest-Cl is PadChest's), `test_in_pretraining`: the target's test images that are in the
source's pre-training rows (its train and valid rows in a split file given; every image of a source given
only by `--root`). By id where the two share an id space (PadChest-Cl and PadChest: the ImageID; also
their patients), by content where both have images, else not checkable offline and the reason given:
COVIDx renames the NIH images it took (RSNA's ids) and no id mapping ships with either dataset, so
COVIDx vs NIH needs both image folders (and, where RSNA re-encoded them, `--content pixels`).

`init_leak` is also what `xrstudy sweep plan` flags as `leak`: one rule for both. Content hashes can be
kept in `cache_dir` (one line per file, keyed by path, size and modification time): an interrupted audit
of a large image set resumes where it stopped. Torch-free; nothing is modified.
"""

from __future__ import annotations

import csv
import hashlib
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from xrstudy.data import sources
from xrstudy.data.splits import SPLITS
from xrstudy.fileio import NotRegularFileError, file_lock, read_regular_file

CONTENT_MODES = ("bytes", "pixels", "none")
SPLIT_COLUMNS = ("source", "image_id", "split")
PRETRAINING_SPLITS = ("train", "valid")  # valid chose the pre-training checkpoint: it shaped the model too
EXAMPLES = 5  # examples shown per finding


class AuditError(ValueError):
    """A split file is not what `save_split` writes (names the file, line and column)."""


# ---- the rule shared with `sweep plan` ---------------------------------------------------------------
def init_leak(target: str, init_sources: Iterable[str]) -> list[str]:
    """The datasets among an init's pre-training sources whose images `target` holds (the target itself,
    or `Source.shares_images_with`): its test images may have been seen in pre-training. Sorted; empty
    when none."""
    holds = {target, *sources.source_of(target).shares_images_with}
    return sorted(holds.intersection(init_sources))


def same_ids(a: str, b: str) -> bool:
    """Whether two sources name the same image by the same id (PadChest-Cl's ids are PadChest's ImageIDs)."""
    base = {name: sources.source_of(name).paper_single_label_of or name for name in (a, b)}
    return base[a] == base[b]


# ---- reading ---------------------------------------------------------------------------------------
def read_split_file(path: str | Path) -> pd.DataFrame:
    """A split file as rows (source, image_id, split, line): `line` is the row's line in the file (header 1).

    Missing columns, blank fields and split names outside train / valid / test are AuditErrors naming
    the file, line and column."""
    path = Path(path)
    try:
        text = read_regular_file(path).decode("utf-8")
    except NotRegularFileError as err:
        raise AuditError(f"{path}: not a regular file (a {err.kind}); expected a split file") from None
    except FileNotFoundError:
        raise AuditError(f"{path}: no such split file") from None
    except UnicodeDecodeError as err:
        raise AuditError(f"{path}: not UTF-8 text (byte {err.start}); expected a split file") from None
    rows = list(csv.reader(text.splitlines()))
    if not rows:
        raise AuditError(f"{path}: empty; expected the header {','.join(SPLIT_COLUMNS)} and one row per image")
    header = [h.strip() for h in rows[0]]
    missing = [c for c in SPLIT_COLUMNS if c not in header]
    if missing:
        raise AuditError(
            f"{path}, line 1: missing column(s) {missing} (found: {header}); expected a split file as "
            f"`xrstudy data split` writes it: {','.join(SPLIT_COLUMNS)}"
        )
    where = [header.index(c) for c in SPLIT_COLUMNS]
    records = []
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) < len(header):
            raise AuditError(f"{path}, line {line}: {len(row)} field(s); expected {len(header)} ({','.join(header)})")
        values = [row[i].strip() for i in where]
        for column, value in zip(SPLIT_COLUMNS, values):
            if not value:
                raise AuditError(f"{path}, line {line}, column '{column}': blank; expected a value")
        if values[2] not in SPLITS:
            raise AuditError(f"{path}, line {line}, column 'split': {values[2]!r}; expected one of {list(SPLITS)}")
        records.append((*values, line))
    return pd.DataFrame(records, columns=[*SPLIT_COLUMNS, "line"])


@dataclass(frozen=True)
class SourceFiles:
    """What a source's root gives the audit: each image's patient and path, and whether images are on disk."""

    name: str
    root: Path
    table: pd.DataFrame  # image_id, patient_id, path (every image of the source's label files)
    images: bool  # image folders present (content can be hashed); False: the label files alone
    note: str = ""


def source_files(name: str, root: str | Path, *, metadata_only: bool = False) -> SourceFiles:
    """Read a source's label files for the audit. A target built from another source's file (PadChest-Cl)
    is read as that source (every image, not only the task's). Without `metadata_only` the image folders
    are looked for; when absent, the label files alone are read and `note` says so."""
    base = sources.source_of(name).paper_single_label_of or name
    root = Path(root)
    images, note = not metadata_only, ""
    try:
        table = sources.read_source(base, root, metadata_only, findings=False)
    except sources.SourceError as err:
        if metadata_only or "metadata_only=True" not in str(err):  # a broken label file, not absent images
            raise
        table = sources.read_source(base, root, True, findings=False)
        images, note = False, f"images absent under {root}: compared by id only"
    return SourceFiles(name, root, table[["image_id", "patient_id", "path"]].astype(str), images, note)


# ---- content hashes ----------------------------------------------------------------------------------
def _digest_bytes(path: str) -> str:
    return hashlib.blake2b(read_regular_file(path), digest_size=16).hexdigest()


def _digest_pixels(path: str) -> str:
    from PIL import Image  # only for --content pixels

    with Image.open(path) as image:
        image.load()
        head = f"{image.mode}:{image.size[0]}x{image.size[1]}:".encode()
        return hashlib.blake2b(head + image.tobytes(), digest_size=16).hexdigest()


DIGESTS: dict[str, Callable[[str], str]] = {"bytes": _digest_bytes, "pixels": _digest_pixels}


@dataclass
class Hashed:
    """Digests by path, and the paths that could not be hashed (absent, or unreadable with the reason)."""

    digests: dict[str, str] = field(default_factory=dict)
    absent: list[str] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    from_cache: int = 0


def content_digests(
    paths: Iterable[str], content: str = "bytes", *, workers: int = 0, cache_dir: str | Path | None = None
) -> Hashed:
    """Hash every file of `paths` (threads: `workers`, 0 = one per core); files absent are listed, a file
    that cannot be read or decoded is listed with the reason. With `cache_dir`, digests are kept in
    `{cache_dir}/content-{content}.tsv` (path, size, mtime, digest) and reused while a file is unchanged;
    new ones are appended as they come, so an interrupted run loses at most one batch."""
    if content not in DIGESTS:
        raise ValueError(f"content={content!r}; expected one of {tuple(DIGESTS)}")
    out = Hashed()
    todo: list[tuple[str, int, int]] = []
    cache_file = Path(cache_dir) / f"content-{content}.tsv" if cache_dir else None
    known = _read_cache(cache_file) if cache_file else {}
    for path in dict.fromkeys(str(p) for p in paths):
        try:
            info = os.stat(path)
        except OSError:
            out.absent.append(path)
            continue
        stamp = (info.st_size, info.st_mtime_ns)
        if known.get(path, (None, None))[0] == stamp:
            out.digests[path] = known[path][1]
            out.from_cache += 1
        else:
            todo.append((path, *stamp))
    digest = DIGESTS[content]

    def one(item: tuple[str, int, int]) -> tuple[tuple[str, int, int], str | None, str]:
        try:
            return item, digest(item[0]), ""
        except (OSError, ValueError, SyntaxError) as err:  # PIL raises all three on a broken image
            return item, None, f"{type(err).__name__}: {err}"

    batch = 2048
    pool = ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1)
    try:
        for start in range(0, len(todo), batch):
            done = list(pool.map(one, todo[start : start + batch]))
            for (path, _, _), value, error in done:
                if value is None:
                    out.unreadable.append((path, error))
                else:
                    out.digests[path] = value
            if cache_file:
                _append_cache(cache_file, [(item, value) for item, value, _ in done if value is not None])
    finally:  # Ctrl-C: drop the queued files at once (the batches done are in the cache)
        pool.shutdown(wait=True, cancel_futures=True)
    return out


def _read_cache(path: Path) -> dict[str, tuple[tuple[int, int], str]]:
    known: dict[str, tuple[tuple[int, int], str]] = {}
    if not path.is_file():
        return known
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.split("\t")
        if len(parts) == 4 and parts[1].isdigit() and parts[2].isdigit():  # a cut last line is skipped
            known[parts[0]] = ((int(parts[1]), int(parts[2])), parts[3])
    return known


def _append_cache(path: Path, entries: Sequence[tuple[tuple[str, int, int], str]]) -> None:
    if not entries:
        return
    text = "".join(f"{p}\t{size}\t{mtime}\t{digest}\n" for (p, size, mtime), digest in entries if "\t" not in p)
    with file_lock(path.with_name(path.name + ".lock")), open(path, "a", encoding="utf-8") as handle:
        handle.write(text)


# ---- the audit -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Group:
    """The rows of one source in one split file (or every image of a source given only by its root)."""

    file: str  # the split file, or "" for a source given only by --root
    source: str
    rows: pd.DataFrame  # image_id, split, (patient_id, path where the labels are known)

    @property
    def name(self) -> str:
        return f"{self.file} {self.source}" if self.file else f"{self.source} (every image of --root)"


def _examples(items: Iterable[Any]) -> list[Any]:
    return list(items)[:EXAMPLES]


def _sides(frame: pd.DataFrame, key: str) -> pd.DataFrame:
    """The `key` values on more than one side, with their images per side."""
    per_side = frame.groupby([key, "split"], sort=True).size().unstack("split", fill_value=0)
    return per_side[(per_side > 0).sum(axis=1) > 1]


def audit(
    split_files: Sequence[str | Path],
    roots: Mapping[str, str | Path] | None = None,
    *,
    content: str = "bytes",
    metadata_only: bool = False,
    workers: int = 0,
    cache_dir: str | Path | None = None,
) -> dict[str, Any]:
    """The audit of `split_files` (see the top of this module); `roots`: source name -> folder as distributed.

    Returns {"files", "sources", "findings", "leaks", "skipped"}: one finding per check that could be made
    (check, file, source, count, images, examples, how), and one `skipped` line per check that could not,
    with the reason. `leaks` is the number of findings with a non-zero count."""
    if content not in CONTENT_MODES:
        raise ValueError(f"content={content!r}; expected one of {CONTENT_MODES}")
    roots = {name: Path(folder) for name, folder in (roots or {}).items()}
    groups, files = [], []
    for path in split_files:
        rows = read_split_file(path)
        files.append(
            {
                "path": str(path),
                "rows": int(len(rows)),
                "sources": {
                    str(s): {str(k): int(v) for k, v in part["split"].value_counts().sort_index().items()}
                    for s, part in rows.groupby("source", sort=True)
                },
            }
        )
        groups += [Group(str(path), str(s), part.drop(columns="line")) for s, part in rows.groupby("source", sort=True)]
    named = {g.source for g in groups}
    if not groups:
        raise AuditError("no split rows to audit: the split files hold a header only")
    unknown_roots = sorted(n for n in roots if n not in named and not any(same_ids(n, s) for s in named))
    read: dict[str, SourceFiles] = {}

    def files_of(name: str) -> SourceFiles | None:
        root = roots.get(name) or next((roots[n] for n in roots if same_ids(n, name)), None)
        if root is None:
            return None
        if name not in read:
            read[name] = source_files(name, root, metadata_only=metadata_only)
        return read[name]

    for name in unknown_roots:  # a source given by its root alone: its every image is pre-training data
        found = files_of(name)
        groups.append(Group("", name, found.table.assign(split="train")))
    findings: list[dict[str, Any]] = []
    skipped: list[str] = []
    hashed: dict[str, Hashed] = {}
    for i, group in enumerate(groups):
        found = files_of(group.source)
        if found is not None and group.file:
            groups[i] = group = _with_labels(group, found, skipped)
        if group.file:
            findings += _within(group, found, skipped)
        if content != "none" and found is not None and found.images:
            paths = group.rows["path"].dropna()
            hashed[group.name] = content_digests(paths, content, workers=workers, cache_dir=cache_dir)
        elif content != "none":
            reason = "--metadata-only" if metadata_only else (found.note if found else f"no --root {group.source}=DIR")
            skipped.append(f"{group.name}: content not compared ({reason})")
    for group in groups:
        if group.file and group.name in hashed:
            findings.append(_content_within(group, hashed[group.name], content))
    for target in (g for g in groups if g.file):
        for other in groups:
            if other is target or not init_leak(target.source, [other.source]):
                continue
            findings.append(_across(target, other, hashed, content, skipped))
    return {
        "files": files,
        "sources": {
            name: {"root": str(f.root), "images": f.images, "label_rows": int(len(f.table)), "note": f.note}
            for name, f in sorted(read.items())
        },
        "findings": findings,
        "leaks": sum(1 for f in findings if f["count"]),
        "skipped": skipped,
    }


def _with_labels(group: Group, found: SourceFiles, skipped: list[str]) -> Group:
    table = found.table.drop_duplicates("image_id")
    rows = group.rows.merge(table, on="image_id", how="left")
    unmatched = rows["patient_id"].isna()
    if unmatched.any():
        skipped.append(
            f"{group.name}: {int(unmatched.sum())} image ids not in the label files under {found.root} "
            f"(e.g. {', '.join(_examples(rows.loc[unmatched, 'image_id']))}): no patient or content for them"
        )
    return Group(group.file, group.source, rows)


def _within(group: Group, found: SourceFiles | None, skipped: list[str]) -> list[dict[str, Any]]:
    base = {"file": group.file, "source": group.source}
    ids = _sides(group.rows, "image_id")
    out = [
        {
            **base,
            "check": "image_ids",
            "count": int(len(ids)),
            "images": int(ids.to_numpy().sum()),
            "examples": [{"image_id": k, "sides": _side_counts(v)} for k, v in _examples(ids.iterrows())],
            "how": "the same image id listed on more than one side",
        }
    ]
    if found is None:
        skipped.append(f"{group.name}: patients not compared (no --root {group.source}=DIR: patient ids unknown)")
        return out
    known = group.rows.dropna(subset=["patient_id"])
    patients = _sides(known, "patient_id")
    out.append(
        {
            **base,
            "check": "patients",
            "count": int(len(patients)),
            "images": int(patients.to_numpy().sum()),
            "examples": [{"patient_id": k, "sides": _side_counts(v)} for k, v in _examples(patients.iterrows())],
            "how": f"patient ids from the label files under {found.root}",
        }
    )
    return out


def _side_counts(row: pd.Series) -> dict[str, int]:
    return {str(k): int(v) for k, v in row.items() if v}


def _content_within(group: Group, hashed: Hashed, content: str) -> dict[str, Any]:
    rows = group.rows.assign(digest=group.rows["path"].map(hashed.digests)).dropna(subset=["digest"])
    # one picture under two ids on two sides (one id on two sides is the `image_ids` finding already)
    spread = rows.groupby("digest").agg(ids=("image_id", "nunique"), sides=("split", "nunique"))
    leaking = spread[(spread["ids"] > 1) & (spread["sides"] > 1)].index
    shared = rows[rows["digest"].isin(leaking)].drop_duplicates(["image_id", "split"])
    examples = [
        {"digest": d[:12], "images": [f"{r.image_id} ({r.split})" for r in part.itertuples()][:4]}
        for d, part in _examples(shared.groupby("digest", sort=True))
    ]
    return {
        "file": group.file,
        "source": group.source,
        "check": "content",
        "count": int(len(leaking)),
        "images": int(shared["image_id"].nunique()),
        "examples": examples,
        "how": _hash_note(content, hashed, group.rows["path"].nunique()),
        "unreadable": [f"{p}: {e}" for p, e in _examples(hashed.unreadable)],
    }


def _hash_note(content: str, hashed: Hashed, total: int) -> str:
    what = "file bytes" if content == "bytes" else "decoded pixels"
    return (
        f"equal {what} under two ids on more than one side; {len(hashed.digests)} of {total} files hashed "
        f"({hashed.from_cache} from the cache), {len(hashed.absent)} absent, {len(hashed.unreadable)} unreadable"
    )


def _across(target: Group, other: Group, hashed: dict[str, Hashed], content: str, skipped: list[str]) -> dict[str, Any]:
    """The target's test images among `other`'s pre-training rows (train and valid; all for a root alone)."""
    test = target.rows[target.rows["split"] == "test"]
    seen = other.rows[other.rows["split"].isin(PRETRAINING_SPLITS)]
    finding: dict[str, Any] = {
        "file": target.file,
        "source": target.source,
        "check": "test_in_pretraining",
        "against": {"file": other.file or None, "source": other.source},
        "count": 0,
        "images": 0,
        "examples": [],
        "by": [],
        "how": f"{target.name} test images in {other.name}'s pre-training rows ({'/'.join(PRETRAINING_SPLITS)})",
    }
    hits: set[str] = set()
    if same_ids(target.source, other.source):
        by_id = test[test["image_id"].isin(set(seen["image_id"]))]
        hits |= set(by_id["image_id"])
        finding["by"].append("id")
        if "patient_id" in test and "patient_id" in seen:
            patients = set(test["patient_id"].dropna()) & set(seen["patient_id"].dropna())
            finding["patients"] = len(patients)
            finding["patient_examples"] = _examples(sorted(patients))
    if target.name in hashed and other.name in hashed:
        digests_seen = {hashed[other.name].digests.get(p) for p in seen.get("path", [])} - {None}
        by_content = test[test["path"].map(hashed[target.name].digests).isin(digests_seen)]
        hits |= set(by_content["image_id"])
        finding["by"].append(f"content ({content})")
    if not finding["by"]:
        finding["count"] = finding["images"] = None
        finding["reason"] = reason = (
            f"{target.source} and {other.source} name images differently (no id mapping ships with them) and "
            f"their images are not both on disk: give both roots with their image folders"
        )
        skipped.append(f"{target.name} test vs {other.name}: not checkable ({reason})")
        return finding
    finding["count"] = finding["images"] = len(hits)
    finding["examples"] = _examples(sorted(hits))
    return finding


__all__ = [
    "AuditError",
    "CONTENT_MODES",
    "init_leak",
    "same_ids",
    "read_split_file",
    "SourceFiles",
    "source_files",
    "Hashed",
    "content_digests",
    "audit",
]
