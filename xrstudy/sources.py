"""One adapter per dataset, all with the same interface: `read_source(name, root) -> canonical table`.

Each adapter reads the source's own files exactly as distributed (label files plain or gzipped)
and returns the canonical table of `xrstudy.labels` (META_COLUMNS + one float column per finding
with 1 / 0 / -1 / NaN, or a `label` column for single-label targets). Uncertain labels are kept
as -1 here; `labels.apply_policy` resolves them.

`metadata_only=True` reads the label files alone (the images may be absent), so the real label
files can be counted, merged and split at full size. Without it, a missing image folder is an
error; a missing single image is left to the image cache, which quarantines and reports it.

Bad input raises `SourceError` naming the file, the row (line number in the file, header = 1)
and the column, with what was expected.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from xrstudy import labels


class SourceError(ValueError):
    """A source's files are not what its adapter expects."""


Reader = Callable[[str, Path, bool], pd.DataFrame]  # (registry name, root, metadata_only) -> table


@dataclass(frozen=True)
class Source:
    name: str
    read: Reader
    multilabel: bool  # multi-label findings (X-ray pre-training sources) or one `label` per image
    modality: str  # "xray" or "natural": images are grayscale or colour
    layout: str  # what `root` must hold, for error messages and the README
    # What a plan needs without the files (xrstudy sweep plan with no roots):
    published_train_size: int | None = None  # training images of the paper's split, as published
    published_classes: int | None = None  # classes of a single-label target (few-shot sizes without the files)
    native_hw: tuple[int, int] | None = None  # typical original (height, width); None = large (>= 96 px)
    transfer_pipeline: str = "bit"  # "bit": BiT-HyperRule resolution | "xray": the pre-training X-ray pipeline
    shares_images_with: tuple[str, ...] = ()  # sources whose images this one contains (leak check)
    # Pre-training sources: training images per canonical view in the paper's split, as published
    # (the plan sums the views a cell keeps); ((view, images), ...).
    published_train_by_view: tuple[tuple[str, int], ...] = ()
    # How the authors' code builds this target's k-shot set (shots_mode: paper), from the dataset class it
    # uses: "label_array" (it has a `labels` array: finetune.py draws per class) or "kshot_finder" (BiT's
    # fewshot.find_fewshot_indices over a seeded shuffled DataLoader); "" for pre-training sources.
    paper_fewshot: str = ""
    # label_mode: paper builds this single-label target from that multi-label source: its images with
    # exactly one finding positive (the authors' --multilabel-force-classification), read in `paper_views`.
    paper_single_label_of: str = ""
    paper_views: tuple[str, ...] = ()


SOURCES: dict[str, Source] = {}


def register(name: str, *, multilabel: bool, modality: str, layout: str, **facts: object) -> Callable[[Reader], Reader]:
    """Register an adapter; `facts` fill the optional Source fields (published sizes, pipeline, ...)."""
    def add(read: Reader) -> Reader:
        SOURCES[name] = Source(name, read, multilabel, modality, layout, **facts)  # type: ignore[arg-type]
        return read

    return add


def source_of(name: str) -> Source:
    """The adapter of `name`; a name outside the registry is read as an ImageFolder tree."""
    if name in SOURCES:
        return SOURCES[name]
    return dataclasses.replace(SOURCES["imagefolder"], name=name)


def read_source(name: str, root: str | Path, metadata_only: bool = False) -> pd.DataFrame:
    """The canonical table of source `name` stored under `root` (a fresh copy on every call)."""
    root = Path(root).expanduser().absolute()
    if not root.is_dir():
        raise SourceError(f"{name}: root {root} is not a directory; expected {source_of(name).layout}")
    source = source_of(name)
    if name not in _CACHED_READS or (name == "nih" and not metadata_only):
        return source.read(name, root, metadata_only)
    key = (name, str(root), metadata_only, _root_signature(root))
    if key not in _READ_CACHE:
        if len(_READ_CACHE) >= _READ_CACHE_SIZE:  # real tables are hundreds of MB: keep a few
            _READ_CACHE.pop(next(iter(_READ_CACHE)))
        _READ_CACHE[key] = source.read(name, root, metadata_only)
    # With pandas' copy-on-write (always on from pandas 3) a shallow copy already protects the cache.
    return _READ_CACHE[key].copy(deep=not _COPY_ON_WRITE)


# Sweeps in a warm kernel and notebooks read the same label files again and again; parsing the
# real ones takes seconds. Keyed by the size and mtime of the files at the top of the root, so an
# edited label file is read afresh.
# Only sources whose label files lie at the top of the root and whose image paths follow from the
# labels (NIH scans its image folders, so only its metadata-only reads are kept).
_READ_CACHE: dict[tuple, pd.DataFrame] = {}
_CACHED_READS = frozenset({"chexpert", "mimic", "nih", "padchest", "padchest-cl", "covidx"})
_READ_CACHE_SIZE = 4
_COPY_ON_WRITE = int(pd.__version__.split(".")[0]) >= 3


def _root_signature(root: Path) -> tuple:
    def signature(entry: os.DirEntry) -> tuple:
        try:
            info = entry.stat()
        except OSError:  # a broken link: the adapter says what is wrong with it
            info = entry.stat(follow_symlinks=False)
        return entry.name, info.st_size, info.st_mtime_ns

    with os.scandir(root) as entries:
        return tuple(sorted(signature(e) for e in entries))


# ---- shared helpers ------------------------------------------------------------------------
# The rules every label file is read by (one place, so every adapter follows them):
# - Special files are not absent. Only a path with no directory entry at all counts as "not there";
#   a folder, FIFO, socket, device or broken link where a label file belongs is an error (examined
#   with stat, never opened: opening a FIFO would block). Where an adapter may do without a file
#   (CheXpert's valid.csv, NIH's split lists), the fallback is warned about and recorded in the
#   table's notes (`notes_of`).
# - Label files are UTF-8 (every supported source is distributed so). A byte that is not UTF-8 in a
#   column we read stops the read with the file, the physical line and the column; it is never
#   decoded some other way and never reaches an adapter as bytes (`_check_utf8`).
NOTES = "notes"  # DataFrame.attrs key: what the reader counted or decided, e.g. {"age_unreadable": 3}


def notes_of(table: pd.DataFrame) -> dict[str, object]:
    """What the reader of `table` counted or fell back to (unreadable ages, a missing optional file)."""
    return dict(table.attrs.get(NOTES, {}))


def _with_notes(table: pd.DataFrame, notes: dict[str, object]) -> pd.DataFrame:
    table.attrs[NOTES] = {**notes_of(table), **notes}
    return table


def _concat(tables: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """pd.concat of one source's parts, notes merged (counts added): pandas drops differing attrs."""
    notes: dict[str, object] = {}
    for table in tables:
        for key, value in notes_of(table).items():
            notes[key] = notes.get(key, 0) + value if isinstance(value, int) else value  # type: ignore[operator]
    return _with_notes(pd.concat(tables, ignore_index=True), notes)


def _entry_kind(path: Path) -> str:
    """"file", "absent", or what else is there (a folder, a FIFO, ...), from stat alone."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "broken symbolic link" if os.path.islink(path) else "absent"
    except OSError as err:
        return f"path that cannot be examined ({err.strerror})"
    if stat.S_ISREG(mode):
        return "file"
    return {stat.S_IFDIR: "directory", stat.S_IFIFO: "FIFO (named pipe)", stat.S_IFSOCK: "socket",
            stat.S_IFCHR: "character device", stat.S_IFBLK: "block device"}.get(stat.S_IFMT(mode), "special file")  # fmt: skip


def optional_file(root: Path, names: Sequence[str], what: str) -> Path | None:
    """The first of `names` (each also as .gz) under root; None only when none of them exists at all.
    One that exists but is not a regular file is an error: absent and unreadable are different."""
    for name in names:
        for candidate in (root / name, root / f"{name}.gz"):
            kind = _entry_kind(candidate)
            if kind == "file":
                return candidate
            if kind != "absent":
                raise SourceError(f"{candidate}: is a {kind}; expected the {what} as a regular file (plain or .gz)")
    return None


def _fallback(name: str, message: str) -> str:
    """Say on stderr (a warning) what is done instead of reading an absent optional file; the adapter
    also records the returned message in the table's notes."""
    warnings.warn(f"{name}: {message}", stacklevel=3)
    return message


def find_file(root: Path, names: Sequence[str], what: str) -> Path:
    """The first of `names` (each also as .gz) under root; a clear error when none is there."""
    found = optional_file(root, names, what)
    if found is None:
        raise SourceError(f"{root}: no {what} found; expected one of {[str(n) for n in names]} (plain or .gz)")
    return found


def read_text(path: Path, expected: str) -> str:
    """A text file (plain or .gz) as UTF-8; an error names the physical line of the first bad byte."""
    try:
        raw = path.read_bytes()
        raw = gzip.decompress(raw) if path.suffix == ".gz" else raw
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise SourceError(f"{path}: cannot read as a text file ({err}); expected {expected}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise SourceError(f"{path}, line {line}: byte {raw[err.start]:#04x} is not UTF-8; expected {expected} "
                          f"in UTF-8") from None


def read_table(path: Path, required: Iterable[str], *, optional: Iterable[str] = (),
               dtype: dict | None = None) -> pd.DataFrame:
    """Read a label file (csv or csv.gz), checking it has rows and the columns we need."""
    required, optional = list(required), list(optional)
    try:
        header = pd.read_csv(path, nrows=0).columns
    except pd.errors.EmptyDataError:
        raise SourceError(f"{path}: the file is empty; expected a header with columns {required}") from None
    except UnicodeDecodeError as err:
        raise SourceError(f"{path}, line 1 (the header): byte {err.object[err.start]:#04x} is not UTF-8; "
                          f"label files are read as UTF-8, as distributed") from None
    except (OSError, EOFError, pd.errors.ParserError) as err:
        raise SourceError(f"{path}: cannot read as CSV ({err})") from None
    missing = [c for c in required if c not in header]
    if missing:
        raise SourceError(f"{path}: missing column(s) {missing}; expected columns {required}, found {list(header)}")
    wanted = required + [c for c in optional if c in header]
    frame = _read_csv_columns(path, wanted, [c for c, kind in (dtype or {}).items() if kind is str and c in wanted])
    if frame.empty:
        raise SourceError(f"{path}: no rows below the header")
    return frame


def _read_csv_columns(path: Path, columns: list[str], text_columns: list[str]) -> pd.DataFrame:
    """What `pd.read_csv(path, usecols=columns, dtype={c: str for c in text_columns})` gives, read by
    pyarrow's CSV reader: 2.3x faster on the PadChest file (0.35 s vs 0.8 s), the largest share of
    reading the real label files. Quoted values may span lines (PadChest's do); empty and NA-like
    cells are missing as in pandas; a column pyarrow would read as dates stays text, as in pandas.
    A column holding bytes that are not UTF-8 stops the read (pyarrow would hand it over as bytes)."""
    import pyarrow.csv as arrow_csv
    from pandas._libs.parsers import STR_NA_VALUES

    def read(text: list[str], binary: Sequence[str] = ()) -> pa.Table:
        types = {**{c: pa.string() for c in text}, **{c: pa.binary() for c in binary}}
        options = arrow_csv.ConvertOptions(include_columns=columns, column_types=types,
                                           null_values=sorted(STR_NA_VALUES), strings_can_be_null=True)  # fmt: skip
        return arrow_csv.read_csv(path, parse_options=arrow_csv.ParseOptions(newlines_in_values=True),
                                  convert_options=options)  # fmt: skip

    try:
        try:
            table = read(text_columns)
        except pa.ArrowInvalid as err:
            if "UTF8" in str(err):  # a text column: read it as bytes to say where
                _check_utf8(path, read([], binary=text_columns))
            raise
        _check_utf8(path, table)
        temporal = [f.name for f in table.schema if pa.types.is_temporal(f.type)]
        if temporal:
            table = read(text_columns + temporal)
    except (pa.ArrowInvalid, OSError, EOFError) as err:
        raise SourceError(f"{path}: cannot read as CSV ({err})") from None
    return table.to_pandas()


def _check_utf8(path: Path, table: pa.Table) -> None:
    """Stop at the first value that is not UTF-8 (pyarrow reads such a column as bytes): name the
    physical line of the first bad byte, the column, and how many rows hold such bytes."""
    first_row, bad_columns, bad_rows = None, {}, set()
    for field in table.schema:
        if not (pa.types.is_binary(field.type) or pa.types.is_large_binary(field.type)):
            continue
        rows = [i for i, value in enumerate(table.column(field.name).to_pylist()) if value is not None and not _is_utf8(value)]
        if rows:
            bad_columns[field.name] = len(rows)
            bad_rows.update(rows)
            first_row = rows[0] if first_row is None else min(first_row, rows[0])
    if first_row is None:
        return
    column = next(c for c in bad_columns if not _is_utf8(table.column(c)[first_row].as_py() or b""))
    value = table.column(column)[first_row].as_py()
    line, byte = _first_bad_byte(path, line_of(path, first_row))
    raise SourceError(f"{path}, line {line}, column {column!r}: byte {byte:#04x} is not UTF-8 (value {value!r}); "
                      f"{len(bad_rows)} row(s) hold such bytes (per column: {bad_columns}). Label files are read as "
                      f"UTF-8, as distributed: convert this one (e.g. iconv -f latin1 -t utf-8)")


def _is_utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _first_bad_byte(path: Path, from_line: int) -> tuple[int, int]:
    """(physical line, byte) of the first byte that is not UTF-8 at or after line `from_line`."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):  # a UTF-8 sequence never holds a newline byte
            if number >= from_line:
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    return number, raw[err.start]
    return from_line, 0


def lines_of(path: Path, indices: Iterable[int]) -> list[int]:
    """The line in `path` (header = line 1) where each data row read by pandas starts.

    Not simply row + 2: quoted values may span lines (PadChest's LocalizationsCUIS holds numpy-style
    lists broken over lines; 5,214 of its 160,861 rows do), so the file is re-read with the csv
    module, counting physical lines. Only error messages call this, so its cost does not matter."""
    wanted = sorted({int(i) for i in indices})
    found: dict[int, int] = {}
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", newline="", encoding="utf-8", errors="replace") as handle:
        reader = csv.reader(handle)
        next(reader, None)  # the header
        row, start = 0, reader.line_num + 1
        for record in reader:
            if record:  # pandas skips blank lines, so they are not rows
                if wanted and row == wanted[len(found)]:
                    found[row] = start
                    if len(found) == len(wanted):
                        break
                row += 1
            start = reader.line_num + 1
    return [found.get(int(i), int(i) + 2) for i in indices]


def line_of(path: Path, index: int) -> int:
    return lines_of(path, [index])[0]


def check_unique(ids: pd.Series, path: Path, column: str) -> None:
    duplicated = ids.duplicated(keep=False)
    if duplicated.any():
        first = ids[duplicated].iloc[0]
        rows = lines_of(path, ids.index[ids == first][:5])
        raise SourceError(f"{path}: duplicate {column} {first!r} on lines {rows} "
                          f"({int(ids.duplicated().sum())} duplicates in all); each image must appear once")


def check_values(frame: pd.DataFrame, columns: Sequence[str], path: Path, allowed=(1.0, 0.0, -1.0)) -> None:
    """Label columns hold only the allowed numbers or blank."""
    for column in columns:
        values = pd.to_numeric(frame[column], errors="coerce")
        bad = (values.isna() & frame[column].notna()) | ~(values.isna() | values.isin(allowed))
        if bad.any():
            index = bad.idxmax()
            raise SourceError(f"{path}, line {line_of(path, index)}, column {column!r}: value {str(frame[column][index])!r}; "
                              f"expected one of {list(allowed)} or blank")


def require_images(root: Path, folder: str, name: str, metadata_only: bool) -> None:
    if not metadata_only and not (root / folder).is_dir():
        raise SourceError(f"{name}: image folder {root / folder} does not exist; to work from the label files "
                          f"alone pass metadata_only=True (CLI: --metadata-only)")


def canonical(source: str, *, image_id, path, patient_id, study_id, view, sex="", age=np.nan, split="",
              raw_labels="", findings: pd.DataFrame | None = None, label=None) -> pd.DataFrame:
    """Assemble a canonical table (META_COLUMNS, then findings or `label`). `age` may be raw text:
    values that are neither blank nor a number become NaN and are counted in the notes."""
    image_id = pd.Series(image_id).astype(str).reset_index(drop=True)
    n = len(image_id)
    notes: dict[str, object] = {}
    if not (np.isscalar(age) or age is None):
        age, notes["age_unreadable"] = _numbers(age)

    def column(values, dtype=str):
        if np.isscalar(values) or values is None:
            return np.full(n, values, dtype=object if dtype is str else dtype)
        values = pd.Series(values).reset_index(drop=True)
        # Strings stay a pandas string Series: a round trip through numpy objects costs seconds on
        # the real files.
        return values.fillna("").astype(str) if dtype is str else values.to_numpy(dtype=dtype)

    table = pd.DataFrame({
        "image_id": image_id.to_numpy(), "path": column(path), "source": source,
        "patient_id": f"{source}:" + column(patient_id), "study_id": column(study_id),
        "view": column(view), "sex": column(sex), "age": column(age, np.float32), "split": column(split),
        "raw_labels": column(raw_labels),
    })  # fmt: skip
    if findings is not None:
        values = findings.to_numpy(dtype=np.float32, na_value=np.nan)
        table = pd.concat([table, pd.DataFrame(values, columns=list(findings.columns), copy=False)], axis=1)
    if label is not None:
        table["label"] = column(label)
    return _with_notes(table, notes)


def _numbers(values) -> tuple[pd.Series, int]:
    """A column as numbers (NaN where blank or unreadable) and how many were unreadable: neither
    blank nor a number (e.g. 'abc'), so the NaNs they become are counted, not silent."""
    values = pd.Series(values).reset_index(drop=True)
    if pd.api.types.is_numeric_dtype(values):
        return values, 0
    numbers = pd.to_numeric(values, errors="coerce")
    unreadable = numbers.isna() & values.notna() & values.astype("str").str.strip().ne("")
    return numbers, int(unreadable.sum())


def _regex_groups(series: pd.Series, pattern: str) -> pd.DataFrame:
    """Named regex groups of every string, vectorised in Arrow (pandas' str.extract loops in Python:
    0.6 s vs 0.14 s on CheXpert's 223k paths). Non-matching rows give NaN."""
    groups = pc.extract_regex(pa.array(series, type=pa.string()), pattern)
    return pd.DataFrame({name: pd.Series(pc.struct_field(groups, name), index=series.index, dtype="str")
                         for name in (f.name for f in groups.type)})


def _split_names(series: pd.Series) -> pd.Series:
    return series.map({"train": "train", "valid": "valid", "validate": "valid", "val": "valid", "test": "test"})


# ---- CheXpert v1.0 / v1.0-small ---------------------------------------------------------------
CHEXPERT_LAYOUT = "train.csv and valid.csv (CheXpert v1.0 or v1.0-small) beside train/ and valid/ image folders"


# train.csv of CheXpert v1.0 (the torchxrayvision wheel's copy): Frontal rows by AP/PA (LL, RL -> OTHER), Lateral.
@register("chexpert", multilabel=True, modality="xray", layout=CHEXPERT_LAYOUT,
          published_train_by_view=(("PA", 29_420), ("AP", 161_590), ("LATERAL", 32_387), ("OTHER", 17)))
def read_chexpert(name: str, root: Path, metadata_only: bool) -> pd.DataFrame:
    required = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", labels.NO_FINDING, *labels.CHEXPERT_FINDINGS]
    frames, notes = [], {}
    for split in ("train", "valid"):
        path = optional_file(root, [f"{split}.csv"], f"CheXpert {split} label file")
        if path is None and split == "valid":  # some copies ship train.csv alone: say so, and record it
            notes["valid_split"] = _fallback(name, f"{root}/valid.csv is absent: the valid split is carved "
                                                   f"from train by patient (xrstudy.splits)")
            continue
        path = path or find_file(root, [f"{split}.csv"], f"CheXpert {split} label file")
        frame = read_table(path, required)
        check_values(frame, [labels.NO_FINDING, *labels.CHEXPERT_FINDINGS], path)
        parts = _regex_groups(frame["Path"], r"(?P<patient>patient\d+)/(?P<study>study\d+)/")
        if parts["patient"].isna().any():
            index = parts["patient"].isna().idxmax()
            raise SourceError(f"{path}, line {line_of(path, index)}, column 'Path': {frame['Path'][index]!r}; "
                              f"expected '<folder>/{split}/patientNNNNN/studyN/viewN_<frontal|lateral>.jpg'")
        frames.append((split, path, frame, parts))
    require_images(root, "train", name, metadata_only)

    tables = []
    for split, path, frame, parts in frames:
        check_unique(frame["Path"], path, "Path")
        # `Path` starts with the distributed folder name; resolve the rest against --root so a
        # renamed copy (e.g. /data/chexpert) works as well.
        relative = pd.Series(pc.replace_substring_regex(pa.array(frame["Path"]), r"^[^/]*/", "", max_replacements=1),
                             index=frame.index, dtype="str")
        frontal = frame["Frontal/Lateral"].eq("Frontal")
        view = np.select([~frontal, frame["AP/PA"].eq("PA"), frame["AP/PA"].eq("AP")],
                         ["LATERAL", "PA", "AP"], "OTHER")
        findings = frame[[labels.NO_FINDING, *labels.CHEXPERT_FINDINGS]].rename(columns=labels.CHEXPERT_SYNONYMS)
        tables.append(canonical(
            name, image_id=frame["Path"], path=str(root) + os.sep + relative, patient_id=parts["patient"],
            study_id=parts["patient"] + "/" + parts["study"], view=view,
            sex=frame["Sex"].map({"Male": "M", "Female": "F"}), age=frame["Age"], split=split,
            findings=findings))  # fmt: skip
    return _with_notes(_concat(tables), notes)


# ---- MIMIC-CXR-JPG 2.0 ---------------------------------------------------------------------------
MIMIC_LAYOUT = "mimic-cxr-2.0.0-{chexpert,metadata,split}.csv.gz and files/pXX/pNNNNNNNN/sNNNNNNNN/*.jpg"


# Not in any wheel: MIMIC-CXR-JPG 2.0.0 metadata ViewPosition counts over all splits (PA 96,161, AP 147,173,
# LATERAL + LL 117,985) times the official train share 368,960 / 377,110 images; estimates.
@register("mimic", multilabel=True, modality="xray", layout=MIMIC_LAYOUT,
          published_train_by_view=(("PA", 94_083), ("AP", 143_992), ("LATERAL", 115_435)))
def read_mimic(name: str, root: Path, metadata_only: bool) -> pd.DataFrame:
    label_path = find_file(root, ["mimic-cxr-2.0.0-chexpert.csv"], "MIMIC-CXR-JPG CheXpert label file")
    meta_path = find_file(root, ["mimic-cxr-2.0.0-metadata.csv"], "MIMIC-CXR-JPG metadata file")
    split_path = find_file(root, ["mimic-cxr-2.0.0-split.csv"], "MIMIC-CXR-JPG split file")
    finding_columns = [labels.NO_FINDING, *labels.CHEXPERT_FINDINGS]
    study_labels = read_table(label_path, ["subject_id", "study_id", *finding_columns])
    check_values(study_labels, finding_columns, label_path)
    check_unique(study_labels["study_id"], label_path, "study_id")
    meta = read_table(meta_path, ["dicom_id", "subject_id", "study_id", "ViewPosition"], dtype={"dicom_id": str})
    check_unique(meta["dicom_id"], meta_path, "dicom_id")
    split = read_table(split_path, ["dicom_id", "split"], dtype={"dicom_id": str})
    check_unique(split["dicom_id"], split_path, "dicom_id")
    require_images(root, "files", name, metadata_only)

    # One row per image; studies without a label row keep unknown (NaN) findings.
    images = meta.merge(split, on="dicom_id", how="left", validate="one_to_one")
    images = images.merge(study_labels, on=["subject_id", "study_id"], how="left", validate="many_to_one",
                          indicator="label_row")
    subject, study = images["subject_id"].astype(str), images["study_id"].astype(str)
    relative = "files/p" + subject.str[:2] + "/p" + subject + "/s" + study + "/" + images["dicom_id"] + ".jpg"
    position = images["ViewPosition"]
    view = np.select([position.eq("PA"), position.eq("AP"), position.isin(["LATERAL", "LL"])],
                     ["PA", "AP", "LATERAL"], "OTHER")
    findings = images[finding_columns].rename(columns=labels.CHEXPERT_SYNONYMS)
    # Which images have a row in the label file (the authors read only those: label_mode paper).
    raw_labels = np.where((images["label_row"] == "both").to_numpy(), labels.MIMIC_LABEL_FILE, "")
    return canonical(name, image_id=images["dicom_id"], path=str(root) + os.sep + relative, patient_id=subject,
                     study_id=study, view=view, split=_split_names(images["split"]), raw_labels=raw_labels,
                     findings=findings)


# ---- NIH ChestX-ray14 ------------------------------------------------------------------------------
NIH_LAYOUT = "Data_Entry_2017.csv or Data_Entry_2017_v2020.csv, images*/ folders, optional train_val_list.txt / test_list.txt"


def _nih_image_index(root: Path) -> dict[str, str]:
    """Image file name -> path over every images*/ folder (the Kaggle copy nests images_NNN/images/)."""
    index = {}
    for folder in sorted(root.glob("images*")):
        for directory in (folder, folder / "images"):
            if directory.is_dir():
                with os.scandir(directory) as entries:
                    index.update((e.name, e.path) for e in entries if e.is_file())
    return index


NIH_LISTS = {"train_val_list.txt": "train", "test_list.txt": "test"}


def _nih_official_split(name: str, root: Path, entry_path: Path, images: pd.Series) -> tuple[pd.Series, dict]:
    """The official split from train_val_list.txt / test_list.txt, and the notes. Both lists absent:
    no official split (warned, recorded; xrstudy.splits splits NIH by patient). Anything partial -- one
    list alone, an image in neither list or in both -- is an error: a quiet re-split by patient would
    move unlisted images into the test set and put one patient in train and test."""
    lists = {file: optional_file(root, [file], f"NIH official split list {file}") for file in NIH_LISTS}
    split = pd.Series("", index=images.index)
    if not any(lists.values()):
        message = f"{' and '.join(NIH_LISTS)} are absent under {root}: no official split, NIH is split by patient"
        return split, {"official_split": _fallback(name, message)}
    absent = [file for file, path in lists.items() if path is None]
    if absent:
        raise SourceError(f"{root}: {absent[0]} is absent but {[f for f in lists if f not in absent][0]} is "
                          f"there; expected both official NIH split lists (or neither, to split by patient)")
    listed = {file: set(read_text(path, "image file names").split()) for file, path in lists.items()}
    in_both = sorted(set.intersection(*listed.values()) & set(images))
    if in_both:
        raise SourceError(f"{' and '.join(str(p) for p in lists.values())}: {len(in_both)} image(s) are in both "
                          f"lists, e.g. {in_both[:3]}; expected each image of {entry_path.name} in exactly one")
    for file, split_name in NIH_LISTS.items():
        split[images.isin(listed[file])] = split_name
    unlisted = images[split == ""]
    if len(unlisted):
        raise SourceError(f"{' and '.join(str(p) for p in lists.values())}: {len(unlisted)} of the {len(images)} "
                          f"images of {entry_path.name} are in neither list, e.g. {unlisted.iloc[:3].tolist()} "
                          f"(line(s) {lines_of(entry_path, unlisted.index[:3])}); expected every image in exactly "
                          f"one of them (a truncated list?). Restore the lists, or remove both to split NIH by patient")
    return split, {}


# train_val_list.txt holds 86,524 images (not in the wheel); split by view with the whole file's shares
# (Data_Entry_2017_v2020: PA 67,310, AP 44,810 of 112,120), so the per-view numbers are estimates.
@register("nih", multilabel=True, modality="xray", layout=NIH_LAYOUT,
          published_train_by_view=(("PA", 51_944), ("AP", 34_580)))
def read_nih(name: str, root: Path, metadata_only: bool) -> pd.DataFrame:
    path = find_file(root, ["Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv"], "NIH Data_Entry file")
    frame = read_table(path, ["Image Index", "Finding Labels", "Patient ID", "View Position"],
                       optional=["Follow-up #", "Patient Age", "Patient Gender"])
    check_unique(frame["Image Index"], path, "Image Index")
    known = set(labels.NIH_FINDINGS) | {"No Finding"}
    # The label strings repeat (~800 distinct in 112k rows): check each distinct one once.
    distinct = pd.Series(frame["Finding Labels"].fillna("").unique())
    bad = distinct[distinct.map(lambda text: not set(text.split("|")) <= known)]
    if len(bad):
        first = frame.index[frame["Finding Labels"].fillna("") == bad.iloc[0]][0]
        term = next(t for t in bad.iloc[0].split("|") if t not in known)
        raise SourceError(f"{path}, line {line_of(path, first)}, column 'Finding Labels': unknown term "
                          f"{term!r}; expected '|'-separated terms from {sorted(known)}")
    # NIH has no uncertain or unknown labels: a finding not listed is absent (0).
    wrapped = "|" + frame["Finding Labels"] + "|"
    findings = pd.DataFrame({labels.NIH_SYNONYMS.get(f, f): wrapped.str.contains(f"|{f}|", regex=False).astype(np.float32)
                             for f in labels.NIH_FINDINGS})  # fmt: skip

    split, notes = _nih_official_split(name, root, path, frame["Image Index"])
    if metadata_only:
        paths = str(root / "images") + os.sep + frame["Image Index"]
    else:
        index = _nih_image_index(root)
        if not index:
            raise SourceError(f"{name}: no images under {root}/images*/; to work from {path.name} alone pass "
                              f"metadata_only=True (CLI: --metadata-only)")
        fallback = str(root / "images") + os.sep  # absent files: quarantined and reported by the cache
        paths = [index.get(image, fallback + image) for image in frame["Image Index"]]
    age = np.nan
    if "Patient Age" in frame:  # integers in the v2020 file; strings like "058Y" in some older copies
        age = frame["Patient Age"]
        if not pd.api.types.is_numeric_dtype(age):  # "058Y" -> "058"; anything else is counted as unreadable
            age = age.str.replace(r"^\s*(\d+)\s*[Yy]?\s*$", r"\1", regex=True)
    follow = frame["Follow-up #"].astype(str) if "Follow-up #" in frame else frame["Image Index"]
    patient = frame["Patient ID"].astype(str)
    return canonical(
        name, image_id=frame["Image Index"], path=paths, patient_id=patient, study_id=patient + "/" + follow,
        view=frame["View Position"].where(frame["View Position"].isin(["PA", "AP"]), "OTHER"),
        sex=frame.get("Patient Gender", ""), age=age, split=split, raw_labels=frame["Finding Labels"],
        findings=findings).pipe(_with_notes, notes)  # fmt: skip


# ---- PadChest -------------------------------------------------------------------------------------
PADCHEST_FILE = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"
PADCHEST_LAYOUT = f"{PADCHEST_FILE}(.gz) and the numbered ImageDir folders of 16-bit PNGs"
# Projection -> canonical view; the rest (EXCLUDE, UNK) is OTHER. The authors call AP_horizontal "AP Supine".
PADCHEST_VIEWS = {"PA": "PA", "L": "LATERAL", "AP": "AP", "AP_horizontal": "AP_SUPINE", "COSTAL": "COSTAL"}


@dataclass(frozen=True)
class PadchestFrame:
    frame: pd.DataFrame
    terms: pd.Series  # one stripped term per row of `frame` it belongs to (exploded; index = frame index)
    path: Path


def _read_padchest_terms(root: Path) -> PadchestFrame:
    path = find_file(root, [PADCHEST_FILE], "PadChest label file")
    frame = read_table(path, ["ImageID", "ImageDir", "PatientID", "Projection", "Labels"],
                       optional=["StudyID", "PatientBirth", "PatientSex_DICOM", "StudyDate_DICOM"],
                       dtype={"ImageID": str, "PatientID": str, "StudyID": str})
    check_unique(frame["ImageID"], path, "ImageID")
    listed = frame["Labels"].dropna()
    malformed = ~listed.str.strip().str.match(r"^\[.*\]$")
    if malformed.any():
        index = malformed.idxmax()
        raise SourceError(f"{path}, line {line_of(path, index)}, column 'Labels': {listed[index]!r}; "
                          f"expected a Python-list string such as ['pleural effusion', 'cardiomegaly']")
    # "['pleural effusion', 'cardiomegaly']" -> one row per term, in Arrow (str.findall + explode
    # loops in Python: 0.2 s on the real file)
    inner = pc.replace_substring_regex(pa.array(listed, type=pa.string()), r"^\s*\[\s*'?|'?\s*\]\s*$", "")
    parts = pc.split_pattern_regex(inner, r"'\s*,\s*'")
    terms = pd.Series(pc.utf8_trim_whitespace(pc.list_flatten(parts)), dtype="str",
                      index=listed.index[pc.list_parent_indices(parts).to_numpy()])  # fmt: skip
    terms = terms[terms != ""]
    unknown = terms[~terms.isin(labels.padchest_vocabulary())]
    if len(unknown):
        raise SourceError(f"{path}, line {line_of(path, unknown.index[0])}, column 'Labels': unknown PadChest term "
                          f"{unknown.iloc[0]!r}; known terms are listed in xrstudy/padchest_terms.txt "
                          f"(add a mapping in xrstudy.labels.PADCHEST_TERMS_OF if it is a synonym)")
    return PadchestFrame(frame, terms, path)


def _padchest_meta(name: str, root: Path, pc: PadchestFrame, metadata_only: bool) -> dict:
    require_images(root, str(pc.frame["ImageDir"].iloc[0]), name, metadata_only)
    frame = pc.frame
    image_dir = pd.to_numeric(frame["ImageDir"], errors="coerce").astype("Int64").astype(str)
    age = np.nan
    if "StudyDate_DICOM" in frame and "PatientBirth" in frame:
        age = pd.to_numeric(frame["StudyDate_DICOM"], errors="coerce") // 10000 - pd.to_numeric(frame["PatientBirth"], errors="coerce")
    return dict(
        image_id=frame["ImageID"], path=str(root) + os.sep + image_dir + os.sep + frame["ImageID"],
        patient_id=frame["PatientID"], study_id=frame.get("StudyID", frame["ImageID"]),
        view=frame["Projection"].map(PADCHEST_VIEWS).fillna("OTHER"),
        sex=frame.get("PatientSex_DICOM", pd.Series("", index=frame.index)).where(lambda s: s.isin(["M", "F"]), ""),
        age=age, raw_labels=frame["Labels"],
    )  # fmt: skip


# The authors' split of the 160K file (wheel copy): their filters, 5 views, RandomState(42), first 90 % train.
@register("padchest", multilabel=True, modality="xray", layout=PADCHEST_LAYOUT,
          published_train_by_view=(("PA", 82_484), ("LATERAL", 44_620), ("AP_SUPINE", 12_899), ("AP", 4_060),
                                   ("COSTAL", 575)))
def read_padchest(name: str, root: Path, metadata_only: bool) -> pd.DataFrame:
    pc = _read_padchest_terms(root)
    frame, terms = pc.frame, pc.terms
    canonical_of = {t: labels.padchest_finding(t) for t in labels.padchest_vocabulary()}
    findings_terms = terms[~terms.isin(labels.PADCHEST_NOT_FINDINGS)].map(canonical_of)
    # PadChest annotates its whole vocabulary: a finding no row mentions is still a 0 column.
    # Absent = 0 (as in NIH); a row without labels or marked "exclude" is unknown throughout.
    columns = sorted({labels.padchest_finding(t) for t in labels.padchest_vocabulary() - labels.PADCHEST_NOT_FINDINGS})
    values = np.zeros((len(frame), len(columns)), np.float32)
    position = pd.Series(np.arange(len(frame)), index=frame.index)
    code = pd.Categorical(findings_terms, categories=columns).codes
    values[position[findings_terms.index].to_numpy(), code] = 1.0
    unknown_rows = frame["Labels"].isna() | frame.index.isin(terms.index[terms == labels.PADCHEST_EXCLUDE])
    values[unknown_rows.to_numpy()] = np.nan
    return canonical(name, split="", findings=pd.DataFrame(values, columns=columns, copy=False),
                     **_padchest_meta(name, root, pc, metadata_only))


@register("padchest-cl", multilabel=False, modality="xray", layout=PADCHEST_LAYOUT, published_classes=27, published_train_size=37_387,
          transfer_pipeline="xray", shares_images_with=("padchest",), paper_fewshot="label_array",
          paper_single_label_of="padchest", paper_views=labels.PADCHEST_PAPER_VIEWS)
def read_padchest_cl(name: str, root: Path, metadata_only: bool) -> pd.DataFrame:
    """PadChest-Cl: images whose label list holds exactly one term, that term (or "normal") as the class."""
    pc = _read_padchest_terms(root)
    per_row = pc.terms.groupby(level=0).agg(["count", "first"])
    single = per_row[(per_row["count"] == 1) & ~per_row["first"].isin(labels.PADCHEST_NOT_FINDINGS - {"normal"})]
    classes = single["first"].map(lambda t: t if t == "normal" else labels.padchest_finding(t))
    kept = PadchestFrame(pc.frame.loc[single.index], pc.terms, pc.path)
    return canonical(name, split="", label=classes, **_padchest_meta(name, root, kept, metadata_only))


# ---- any ImageFolder tree ------------------------------------------------------------------------
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm")
SPLIT_FOLDERS = {"train": "train", "training": "train", "val": "valid", "valid": "valid", "validation": "valid",
                 "test": "test", "testing": "test"}  # fmt: skip
IMAGEFOLDER_LAYOUT = "class folders of images, optionally inside train/, valid/ (or val/) and test/ folders"


def _class_images(folder: Path) -> Iterable[tuple[str, str]]:
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        for file in sorted(class_dir.iterdir()):
            if file.suffix.lower() in IMAGE_SUFFIXES:
                yield class_dir.name, str(file)


@register("imagefolder", multilabel=False, modality="natural", layout=IMAGEFOLDER_LAYOUT, paper_fewshot="kshot_finder")
def read_imagefolder(name: str, root: Path, metadata_only: bool) -> pd.DataFrame:
    split_dirs = {SPLIT_FOLDERS[p.name.lower()]: p for p in sorted(root.iterdir())
                  if p.is_dir() and p.name.lower() in SPLIT_FOLDERS}  # fmt: skip
    rows = [(split, label, path) for split, folder in (split_dirs or {"": root}).items()
            for label, path in _class_images(folder)]
    if not rows:
        raise SourceError(f"{name}: no images under {root}; expected {IMAGEFOLDER_LAYOUT} "
                          f"(a name outside {sorted(SOURCES)} is read as an ImageFolder tree)")
    split, label, path = zip(*rows)
    image_id = [os.path.relpath(p, root) for p in path]
    return canonical(name, image_id=image_id, path=list(path), patient_id=image_id, study_id=image_id,
                     view="OTHER", split=list(split), label=list(label))


# ---- transfer targets ------------------------------------------------------------------------------
# Layouts read below, each exactly as distributed (root = the extracted folder):
#   covidx              train.txt, test.txt (newer releases also val.txt), lines
#                       `patient_id filename class data_source` with class positive / negative;
#                       images in train/, test/ (val/). Official splits; patients as given.
#   tuberculosis        Shenzhen + Montgomery PNGs named CHNCXR_0001_0.png / MCUCXR_0001_0.png anywhere
#                       under root (ChinaSet_AllFiles/CXR_png/, MontgomerySet/CXR_png/); suffix _0 normal,
#                       _1 tuberculosis; masks (folders named *mask*) and other files are skipped with a
#                       warning that counts them. No official split: split_mode paper is the authors' 85/15 per
#                       folder (xrstudy.splits), the other modes split by patient.
#   cifar10, cifar100   the python pickles: cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}
#                       and cifar-100-python/{train, test, meta}; root is that folder or its parent. Image
#                       paths are batch members `FILE#N` (decoded by xrstudy.images). Official train/test.
#   pets                Oxford-IIIT Pets: annotations/{trainval,test}.txt (`Abyssinian_100 1 1 1`), images/
#                       {name}.jpg; class = name without the trailing _NNN. trainval -> train, test -> test.
#   flowers102          imagelabels.mat, setid.mat, jpg/image_00001.jpg (or fast.ai's train.txt / valid.txt /
#                       test.txt, classes from 0, which the authors downloaded). `flowers102` is the paper's swapped
#                       split (train = tstid, 6,149 images; valid = valid; test = trnid), `flowers102-official`
#                       the official one (train = trnid, valid = valid, test = tstid). Classes "1".."102".
# Every image is its own patient except in COVIDx, whose patient ids group its splits.
import pickle  # noqa: E402 - the CIFAR batches are pickles (trusted input, as distributed)
import re  # noqa: E402
import warnings  # noqa: E402


def _text_lines(path: Path, expected: str, *, comments: bool = False) -> list[tuple[int, str]]:
    """(line number, stripped text) of every non-blank line (and, with `comments`, not '#...')."""
    text = read_text(path, f"lines {expected}")
    lines = [(number, line.strip()) for number, line in enumerate(text.splitlines(), start=1)
             if line.strip() and not (comments and line.lstrip().startswith("#"))]  # fmt: skip
    if not lines:
        raise SourceError(f"{path}: no entries; expected lines {expected}")
    return lines


def _unique_lines(ids: Sequence[str], where: Sequence[tuple[Path, int]], what: str) -> None:
    """Each id once over all the listed lines; a duplicate names both places."""
    seen: dict[str, tuple[Path, int]] = {}
    for image, (path, line) in zip(ids, where):
        if image in seen:
            first_path, first_line = seen[image]
            raise SourceError(f"{path}, line {line}: duplicate {what} {image!r} (first on {first_path}, line "
                              f"{first_line}); each image must appear once")
        seen[image] = (path, line)


# ---- COVIDx CXR-2 ----------------------------------------------------------------------------------
COVIDX_LAYOUT = ("train.txt and test.txt (and val.txt) with lines 'patient_id filename class data_source' "
                 "(class positive or negative) beside train/ and test/ (and val/) image folders")
COVIDX_LINE = re.compile(r"^(?P<patient>\S+)\s+(?P<file>\S.*?)\s+(?P<cls>\S+)\s+(?P<origin>\S+)$")
COVIDX_CLASSES = ("negative", "positive")


@register("covidx", multilabel=False, modality="xray", layout=COVIDX_LAYOUT, published_classes=2, published_train_size=15_952,
          shares_images_with=("nih",), paper_fewshot="kshot_finder")
def read_covidx(name: str, root: Path, metadata_only: bool) -> pd.DataFrame:
    """COVIDx CXR-2: binary COVID-19 positive vs negative, official train / (val /) test files."""
    files = {"train": find_file(root, ["train.txt"], "COVIDx train list"),
             "test": find_file(root, ["test.txt"], "COVIDx test list")}  # fmt: skip
    if (val := optional_file(root, ["val.txt"], "COVIDx val list")) is not None:  # older releases have none
        files["valid"] = val
    folders = {"train": "train", "valid": "val", "test": "test"}
    expected = "'patient_id filename class data_source', class one of " + "/".join(COVIDX_CLASSES)
    rows = []  # (split, patient, filename, class, class as written, path, line)
    for split, path in files.items():
        for line, text in _text_lines(path, expected):
            match = COVIDX_LINE.match(text)
            if match is None:
                raise SourceError(f"{path}, line {line}: {text!r} has {len(text.split())} field(s); "
                                  f"expected 4 space-separated fields {expected}")
            cls = match["cls"].lower()
            if cls not in COVIDX_CLASSES:
                raise SourceError(f"{path}, line {line}, field 3 (class): {match['cls']!r}; "
                                  f"expected one of {list(COVIDX_CLASSES)}")
            rows.append((split, match["patient"], match["file"], cls, match["cls"], path, line))
    for split in files:
        require_images(root, folders[split], name, metadata_only)
    split, patient, filename, cls, written, path, line = zip(*rows)
    image_id = [f"{folders[s]}/{f}" for s, f in zip(split, filename)]
    _unique_lines(image_id, list(zip(path, line)), "image")
    return canonical(name, image_id=image_id, path=[str(root / i) for i in image_id], patient_id=list(patient),
                     study_id=image_id, view="OTHER", split=list(split), raw_labels=list(written), label=list(cls))


# ---- Tuberculosis: Shenzhen + Montgomery ------------------------------------------------------------
TUBERCULOSIS_PATTERN = re.compile(r"^(?P<set>CHNCXR|MCUCXR)_(?P<number>\d+)_(?P<label>[01])\.png$", re.IGNORECASE)
TUBERCULOSIS_CLASSES = {"0": "normal", "1": "tuberculosis"}
TUBERCULOSIS_LAYOUT = ("Shenzhen (CHNCXR_NNNN_L.png) and/or Montgomery (MCUCXR_NNNN_L.png) PNGs anywhere under "
                       "the root, e.g. ChinaSet_AllFiles/CXR_png/ and MontgomerySet/CXR_png/; L = 0 normal, 1 TB")


@register("tuberculosis", multilabel=False, modality="xray", layout=TUBERCULOSIS_LAYOUT, published_classes=2, published_train_size=679,
          paper_fewshot="kshot_finder")
def read_tuberculosis(name: str, root: Path, metadata_only: bool) -> pd.DataFrame:
    """Shenzhen + Montgomery TB sets; the label is the file-name suffix. The file names are the labels,
    so `metadata_only` reads the same files. Masks (any folder named *mask*, e.g. Montgomery's
    ManualMask/leftMask/ holding PNGs of the same names) and files named otherwise (clinical readings,
    read-me files) are skipped; `warnings.warn` reports how many."""
    found: dict[str, str] = {}
    skipped: list[str] = []
    masks = 0
    for directory, subdirs, filenames in os.walk(root):
        subdirs.sort()
        relative = Path(directory).relative_to(root)
        in_mask_folder = any("mask" in part.lower() for part in relative.parts)
        for filename in sorted(filenames):
            if TUBERCULOSIS_PATTERN.match(filename) is None:
                skipped.append(str(relative / filename))
            elif in_mask_folder:
                masks += 1
            elif filename in found:
                raise SourceError(f"{name}: {filename} occurs twice, {found[filename]} and "
                                  f"{os.path.join(directory, filename)}; point the root at one copy of each set")
            else:
                found[filename] = os.path.join(directory, filename)
    if not found:
        raise SourceError(f"{name}: no image named like CHNCXR_0001_0.png or MCUCXR_0001_0.png under {root} "
                          f"({len(skipped)} other files, {masks} masks); expected {TUBERCULOSIS_LAYOUT}")
    if skipped or masks:
        warnings.warn(f"{name}: read {len(found)} images under {root}; skipped {masks} segmentation mask(s) and "
                      f"{len(skipped)} file(s) not named like CHNCXR_0001_0.png / MCUCXR_0001_0.png "
                      f"(e.g. {skipped[:3]})", stacklevel=2)
    filenames = sorted(found)
    matches = [TUBERCULOSIS_PATTERN.match(f) for f in filenames]
    stems = [f"{m['set'].upper()}_{m['number']}" for m in matches]
    return canonical(name, image_id=filenames, path=[found[f] for f in filenames], patient_id=stems,
                     study_id=stems, view="PA", split="", raw_labels=[m["label"] for m in matches],
                     label=[TUBERCULOSIS_CLASSES[m["label"]] for m in matches])


# ---- CIFAR-10 / CIFAR-100 (python version) --------------------------------------------------------
CIFAR10_LAYOUT = "cifar-10-batches-py/ (or its contents): data_batch_1..data_batch_5, test_batch, batches.meta"
CIFAR100_LAYOUT = "cifar-100-python/ (or its contents): train, test, meta"


def _cifar_pickle(path: Path, keys: Sequence[str]) -> dict[str, object]:
    """The entries `keys` (b"..." in the originals; str keys accepted) of one CIFAR pickle."""
    try:
        with open(path, "rb") as handle:
            batch = pickle.load(handle, encoding="bytes")
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError, ImportError,
            IndexError, KeyError) as err:  # fmt: skip
        raise SourceError(f"{path}: cannot read as a CIFAR python pickle ({type(err).__name__}: {err}); "
                          f"expected a pickled dict with keys {keys}") from None
    if not isinstance(batch, dict):
        raise SourceError(f"{path}: holds a {type(batch).__name__}; expected a pickled dict with keys {keys}")
    out = {}
    for key in keys:
        for candidate in (key.encode(), key):
            if candidate in batch:
                out[key] = batch[candidate]
                break
    missing = [k for k in keys if k not in out and k != "data"]
    if missing:
        raise SourceError(f"{path}: no key(s) {missing}; expected keys {list(keys)}, found {list(batch)[:10]}")
    return out


def _cifar_names(path: Path, key: str) -> list[str]:
    names = _cifar_pickle(path, [key])[key]
    try:
        return [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    except (TypeError, UnicodeDecodeError) as err:
        raise SourceError(f"{path}, key {key!r}: {err}; expected a list of class names") from None


def _read_cifar(name: str, root: Path, metadata_only: bool, *, folder: str, meta: str, names_key: str,
                labels_key: str, batches: Sequence[tuple[str, str]]) -> pd.DataFrame:
    base = root / folder if (root / folder).is_dir() else root
    class_names = _cifar_names(find_file(base, [meta], f"{name} meta file"), names_key)
    tables = []
    for batch_name, split in batches:
        path = base / batch_name
        if not path.is_file():
            raise SourceError(f"{base}: no {batch_name}; expected {[b for b, _ in batches] + [meta]}")
        batch = _cifar_pickle(path, [labels_key, "data"])
        try:
            values = np.asarray(batch[labels_key]).ravel()
            values = values.astype(np.int64, casting="safe" if len(values) else "unsafe")
        except (TypeError, ValueError) as err:
            raise SourceError(f"{path}, key {labels_key!r}: {err}; expected integer class indices") from None
        bad = (values < 0) | (values >= len(class_names))
        if bad.any():
            i = int(np.argmax(bad))
            raise SourceError(f"{path}, key {labels_key!r}, entry {i}: value {values[i]}; expected 0.."
                              f"{len(class_names) - 1} (the {len(class_names)} names in {meta})")
        if "data" in batch:
            rows = int(np.shape(batch["data"])[0]) if np.ndim(batch["data"]) == 2 else -1
            if rows != len(values) or np.shape(batch["data"])[1] != 3072:
                raise SourceError(f"{path}, key 'data': shape {np.shape(batch['data'])}; expected "
                                  f"({len(values)}, 3072), one 3x32x32 image per label")
        elif not metadata_only:
            raise SourceError(f"{path}: no key 'data' (the pixels); to work from the labels alone pass "
                              f"metadata_only=True (CLI: --metadata-only)")
        image_id = [f"{batch_name}#{i}" for i in range(len(values))]
        tables.append(canonical(name, image_id=image_id, path=[f"{path}#{i}" for i in range(len(values))],
                                patient_id=image_id, study_id=image_id, view="OTHER", split=split,
                                label=[class_names[v] for v in values]))  # fmt: skip
    return pd.concat(tables, ignore_index=True)


@register("cifar10", multilabel=False, modality="natural", layout=CIFAR10_LAYOUT, published_classes=10, published_train_size=50_000,
          native_hw=(32, 32), paper_fewshot="kshot_finder")
def read_cifar10(name: str, root: Path, metadata_only: bool) -> pd.DataFrame:
    batches = [(f"data_batch_{i}", "train") for i in range(1, 6)] + [("test_batch", "test")]
    return _read_cifar(name, root, metadata_only, folder="cifar-10-batches-py", meta="batches.meta",
                       names_key="label_names", labels_key="labels", batches=batches)


@register("cifar100", multilabel=False, modality="natural", layout=CIFAR100_LAYOUT, published_classes=100, published_train_size=50_000,
          native_hw=(32, 32), paper_fewshot="kshot_finder")
def read_cifar100(name: str, root: Path, metadata_only: bool) -> pd.DataFrame:
    """CIFAR-100 with its 100 fine labels (the coarse super-classes are not used by the study)."""
    return _read_cifar(name, root, metadata_only, folder="cifar-100-python", meta="meta",
                       names_key="fine_label_names", labels_key="fine_labels",
                       batches=[("train", "train"), ("test", "test")])


# ---- Oxford-IIIT Pets ---------------------------------------------------------------------------------
PETS_LAYOUT = "annotations/trainval.txt and annotations/test.txt ('Abyssinian_100 1 1 1' lines) beside images/"
PETS_LINE = re.compile(r"^(?P<image>(?P<cls>\S+)_\d+)\s+(?P<id>\d+)\s+(?P<species>\d+)\s+(?P<breed>\d+)$")


@register("pets", multilabel=False, modality="natural", layout=PETS_LAYOUT, published_classes=37, published_train_size=3_680,
          paper_fewshot="kshot_finder")
def read_pets(name: str, root: Path, metadata_only: bool) -> pd.DataFrame:
    """Oxford-IIIT Pets, 37 breeds; the class name is the image name without its trailing _NNN
    (cat breeds are capitalised in the originals, dog breeds are not: kept as distributed)."""
    expected = "'<Breed>_<N> CLASS-ID SPECIES BREED-ID', e.g. 'Abyssinian_100 1 1 1'"
    rows = []  # (split, image, class, path, line)
    first_of_id: dict[int, tuple[str, Path, int]] = {}  # class id -> (breed, file, line) where first seen
    first_of_breed: dict[str, tuple[int, Path, int]] = {}
    for file, split in (("trainval.txt", "train"), ("test.txt", "test")):
        path = find_file(root, [f"annotations/{file}"], f"Oxford-IIIT Pets {file}")
        for line, text in _text_lines(path, expected, comments=True):
            match = PETS_LINE.match(text)
            if match is None or int(match["id"]) < 1 or match["species"] not in ("1", "2"):
                raise SourceError(f"{path}, line {line}: {text!r}; expected {expected} "
                                  f"(CLASS-ID 1..37, SPECIES 1 = cat or 2 = dog)")
            class_id, breed = int(match["id"]), match["cls"]
            seen_breed, seen_path, seen_line = first_of_id.setdefault(class_id, (breed, path, line))
            seen_id, other_path, other_line = first_of_breed.setdefault(breed, (class_id, path, line))
            if seen_breed != breed or seen_id != class_id:
                raise SourceError(f"{path}, line {line}: {text!r} gives breed {breed!r} CLASS-ID {class_id}, but "
                                  f"{seen_path.name} line {seen_line} gives id {class_id} to {seen_breed!r} and "
                                  f"{other_path.name} line {other_line} gives {breed!r} id {seen_id}; "
                                  f"expected one CLASS-ID per breed")
            rows.append((split, match["image"], breed, path, line))
    require_images(root, "images", name, metadata_only)
    split, image, cls, path, line = zip(*rows)
    _unique_lines(image, list(zip(path, line)), "image")
    return canonical(name, image_id=list(image), path=[str(root / "images" / f"{i}.jpg") for i in image],
                     patient_id=list(image), study_id=list(image), view="OTHER", split=list(split), label=list(cls))


# ---- Oxford Flowers-102 ------------------------------------------------------------------------------
FLOWERS_LAYOUT = ("imagelabels.mat and setid.mat (trnid, valid, tstid) beside jpg/image_00001.jpg ..., or fast.ai's "
                  "copy: train.txt, valid.txt, test.txt ('jpg/image_00001.jpg 76', classes from 0) beside jpg/")
FLOWERS_SETS = ("trnid", "valid", "tstid")


def _mat_vector(path: Path, key: str) -> np.ndarray:
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    try:
        content = loadmat(path)
    except (OSError, ValueError, TypeError, NotImplementedError, MatReadError) as err:
        raise SourceError(f"{path}: cannot read as a MATLAB .mat file ({err}); expected a variable {key!r}") from None
    if key not in content:
        found = [k for k in content if not k.startswith("__")]
        raise SourceError(f"{path}: no variable {key!r}; expected {key!r}, found {found}")
    values = np.asarray(content[key]).ravel()
    if values.dtype.kind not in "iuf" or (values.dtype.kind == "f" and not np.all(values == np.round(values))):
        raise SourceError(f"{path}, variable {key!r}: {values.dtype} values; expected whole 1-based numbers")
    return values.astype(np.int64)


FLOWERS_FASTAI_LISTS = {"train.txt": "trnid", "valid.txt": "valid", "test.txt": "tstid"}
FLOWERS_FASTAI_LINE = re.compile(r"^(?P<file>jpg/image_\d{5}\.jpg)\s+(?P<cls>\d+)$")


def _read_flowers_fastai(name: str, root: Path, metadata_only: bool, split_of: dict[str, str]) -> pd.DataFrame:
    """fast.ai's copy (the authors' download): train.txt / valid.txt / test.txt with lines
    'jpg/image_06734.jpg 0', classes counted from 0 (class "1" of the .mat files is 0 here)."""
    expected = "'jpg/image_NNNNN.jpg CLASS' with CLASS 0..101"
    rows = []  # (image, class as 1..102, set, path, line)
    for file, key in FLOWERS_FASTAI_LISTS.items():
        path = find_file(root, [file], f"Flowers-102 (fast.ai) {file}")
        for line, text in _text_lines(path, expected):
            match = FLOWERS_FASTAI_LINE.match(text)
            if match is None or int(match["cls"]) > 101:
                raise SourceError(f"{path}, line {line}: {text!r}; expected {expected}")
            rows.append((match["file"].removeprefix("jpg/"), str(int(match["cls"]) + 1), key, path, line))
    require_images(root, "jpg", name, metadata_only)
    image, label, key, path, line = zip(*rows)
    _unique_lines(image, list(zip(path, line)), "image")
    return canonical(name, image_id=list(image), path=[str(root / "jpg" / i) for i in image], patient_id=list(image),
                     study_id=list(image), view="OTHER", split=[split_of[k] for k in key], label=list(label))


def _read_flowers(name: str, root: Path, metadata_only: bool, split_of: dict[str, str]) -> pd.DataFrame:
    if not any((root / f).is_file() for f in ("imagelabels.mat", "imagelabels.mat.gz")) and (root / "train.txt").is_file():
        return _read_flowers_fastai(name, root, metadata_only, split_of)
    label_path = find_file(root, ["imagelabels.mat"], "Flowers-102 label file")
    set_path = find_file(root, ["setid.mat"], "Flowers-102 split file")
    classes = _mat_vector(label_path, "labels")
    if len(classes) == 0 or classes.min() < 1:
        raise SourceError(f"{label_path}, variable 'labels': smallest value {classes.min(initial=0)}; "
                          f"expected class numbers from 1 (1..102)")
    split = np.full(len(classes), "", dtype=object)
    for key in FLOWERS_SETS:
        ids = _mat_vector(set_path, key)
        outside = (ids < 1) | (ids > len(classes))
        if outside.any():
            i = int(np.argmax(outside))
            raise SourceError(f"{set_path}, variable {key!r}, entry {i}: image {ids[i]}; expected 1.."
                              f"{len(classes)} (the images of {label_path.name})")
        taken = split[ids - 1] != ""
        if taken.any() or len(np.unique(ids)) < len(ids):
            i = int(np.argmax(taken)) if taken.any() else int(np.argmax(pd.Series(ids).duplicated().to_numpy()))
            raise SourceError(f"{set_path}, variable {key!r}, entry {i}: image {ids[i]} is listed twice; "
                              f"expected {list(FLOWERS_SETS)} to be disjoint")
        split[ids - 1] = key
    require_images(root, "jpg", name, metadata_only)
    listed = np.flatnonzero(split != "")
    if len(listed) < len(classes):
        warnings.warn(f"{name}: {len(classes) - len(listed)} of the {len(classes)} images of {label_path.name} "
                      f"are in none of {list(FLOWERS_SETS)} of {set_path.name}; left out", stacklevel=3)
    image_id = [f"image_{i + 1:05d}.jpg" for i in listed]
    return canonical(name, image_id=image_id, path=[str(root / "jpg" / i) for i in image_id], patient_id=image_id,
                     study_id=image_id, view="OTHER", split=[split_of[s] for s in split[listed]],
                     label=[str(c) for c in classes[listed]])


@register("flowers102", multilabel=False, modality="natural", layout=FLOWERS_LAYOUT, published_classes=102, published_train_size=6_149,
          paper_fewshot="kshot_finder")
def read_flowers102(name: str, root: Path, metadata_only: bool) -> pd.DataFrame:
    """Flowers-102 as the paper uses it: official train and test swapped, i.e. train = tstid (6,149
    images), valid = valid (1,020), test = trnid (1,020). `flowers102-official` keeps the official split."""
    return _read_flowers(name, root, metadata_only, {"trnid": "test", "valid": "valid", "tstid": "train"})


@register("flowers102-official", multilabel=False, modality="natural", layout=FLOWERS_LAYOUT,
          published_classes=102, published_train_size=1_020, paper_fewshot="kshot_finder")
def read_flowers102_official(name: str, root: Path, metadata_only: bool) -> pd.DataFrame:
    """Flowers-102 with the official split: train = trnid (1,020), valid = valid (1,020), test = tstid (6,149)."""
    return _read_flowers(name, root, metadata_only, {"trnid": "train", "valid": "valid", "tstid": "test"})


__all__ = ["SOURCES", "Source", "SourceError", "register", "read_source", "source_of", "canonical", "read_table",
           "find_file", "check_unique", "line_of", "lines_of"]
