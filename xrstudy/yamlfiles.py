"""Reading the study's YAML (sweep files, cell configs) without the surprises of `yaml.safe_load`.

    load_yaml_text(text, origin)          # the one document in `text`; `origin` names it in errors
    read_yaml_file(path, what)            # the same from a regular file (a FIFO is refused, not waited on)
    shorten(value, limit=80)              # a value's repr cut to `limit` characters, built without a full repr
    count_grid(grid) / check_grid_size(grid, where, limit=MAX_GRID_CELLS, counted=0)

Every refusal is one `YamlError` (a ValueError) whose message starts `{origin}:{line}:` and never holds a
value whole. On top of PyYAML's SafeLoader (same types, same tags, `<<` merge keys kept) it refuses:

* a key repeated in one mapping, anywhere (top level, defaults, blocks, grids): `key 'shots' repeated
  (first at line 3)`. Keys merged in by `<<: *anchor` are not repeats: an explicit key overrides them.
* a key that is not a string (`1:`, `null:`, `yes:`, a date, a list), since every mapping of a sweep or cell
  file is keyed by field names; with `string_keys=False` only a mapping mixing key types is refused.
* nesting deeper than MAX_DEPTH (100) levels, checked while composing, so 50,000 levels end in this error
  and not in a RecursionError (the paper's sweeps nest 5 levels deep).
* aliases that together repeat more than MAX_ALIAS_NODES (10,000) YAML nodes, recursive aliases included.
  Counted while composing, before anything is constructed, so a "billion laughs" document stops after
  composing a few dozen nodes. Why so small: an alias costs nothing to load (PyYAML shares the object) but
  everything downstream expands it (grids, RunConfig tuples, JSON, error messages); 10,000 nodes is about
  11x what the repository's sweeps repeat through `<<: *block` merges (extended.yaml: 904), yet a few MB
  at most when expanded.

`check_grid_size` counts a grid's cells as the product of its list lengths before anything is expanded.
"""

from __future__ import annotations

import math
import os
import reprlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, ScalarNode

from xrstudy.fileio import NotRegularFileError, read_regular_file

MAX_DEPTH = 100
MAX_ALIAS_NODES = 10_000
# Cells one sweep may expand to (each block and all blocks together). The paper's sweep is 1,456 cells,
# its largest block 200 (paper-transfer.yaml: 300), so 10,000 is ~7x the whole study: a larger count is
# a typo (a range written out, an extra grid key) far more often than a plan, and is refused before
# a single cell dict exists. An explicit option raises it (`limit=`).
MAX_GRID_CELLS = 10_000
MESSAGE_VALUE_CHARS = 80  # what `shorten` keeps of one value in a message

_MERGE_TAG = "tag:yaml.org,2002:merge"
_VALUE_TAG = "tag:yaml.org,2002:value"  # the `=` key, a str once flattened


class YamlError(ValueError):
    """A YAML file the study refuses; `str()` is one line `{origin}:{line}: {reason}` (no line: `{origin}: ...`)."""

    def __init__(self, origin: str, line: int | None, reason: str) -> None:
        self.origin, self.line, self.reason = origin, line, reason
        super().__init__(f"{origin}:{line}: {reason}" if line else f"{origin}: {reason}")


# ---- short values ---------------------------------------------------------------------------------
class _ShortRepr(reprlib.Repr):
    """reprlib already cuts strings and containers before building them; these types it would repr whole."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel, self.maxdict, self.maxlist, self.maxtuple, self.maxset = 3, 4, 6, 6, 6
        self.maxstring = self.maxother = MESSAGE_VALUE_CHARS

    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > 128:  # repr of a 10^5-digit int is slow, and refused past 4,300 digits
            return f"<int of {math.floor(x.bit_length() * math.log10(2)) + 1} digits>"
        return repr(x)

    def repr_str(self, x: str | bytes, level: int) -> str:  # the head, not reprlib's head...tail
        return repr(x) if len(x) <= self.maxstring else repr(x[: self.maxstring])[:-1] + "...'"

    repr_bytes = repr_str


_SHORT = _ShortRepr()


def shorten(value: Any, limit: int = MESSAGE_VALUE_CHARS) -> str:
    """`repr(value)` cut to at most `limit` characters (`...` marks a cut), never building the full repr of a
    str, bytes, int or container: what every error message shows of a value."""
    try:
        text = _SHORT.repr(value)
    except Exception:  # a repr that fails must not replace the error being reported
        text = f"<{type(value).__name__}>"
    return _cut(text, limit)


def _a(value: Any) -> str:
    name = type(value).__name__
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def _cut(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: max(limit - 3, 0)] + "..."


# ---- the loader -----------------------------------------------------------------------------------
class _StrictLoader(yaml.SafeLoader):
    """SafeLoader composing with the checks above. Pure Python (not CSafeLoader): the checks hook into
    `compose_node`, which the C loader does not call; sweep files are a few KB."""

    def __init__(self, text: str, origin: str, string_keys: bool, max_depth: int, max_alias_nodes: int) -> None:
        super().__init__(text)
        self.origin, self.string_keys = origin, string_keys
        self.max_depth, self.max_alias_nodes = max_depth, max_alias_nodes
        self._depth = 0
        self._nodes = 0  # nodes composed so far, an alias counting as the nodes it repeats
        self._alias_nodes = 0
        self._sizes: dict[str, int] = {}  # anchor -> nodes of its (expanded) subtree, once composed

    def _error(self, mark: Any, reason: str) -> YamlError:
        return YamlError(self.origin, mark.line + 1 if mark is not None else None, reason)

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, AliasEvent):
            size = self._sizes.get(event.anchor)
            if size is None and event.anchor in self.anchors:  # still open: the alias is inside its anchor
                raise self._error(
                    event.start_mark,
                    f"alias *{_cut(event.anchor, 40)} is inside the node it "
                    f"names (a recursive structure); not allowed here",
                )
            if size is not None:  # undefined: PyYAML's "found undefined alias" below
                self._alias_nodes += size
                self._nodes += size
                if self._alias_nodes > self.max_alias_nodes:
                    raise self._error(
                        event.start_mark,
                        f"aliases repeat more than {self.max_alias_nodes:,} YAML "
                        f"nodes (at *{_cut(event.anchor, 40)}, {size:,} nodes); "
                        f"write the values out or use fewer aliases",
                    )
            return super().compose_node(parent, index)
        self._depth += 1
        if self._depth > self.max_depth:
            raise self._error(event.start_mark, f"nested deeper than {self.max_depth} levels")
        start = self._nodes
        self._nodes += 1
        node = super().compose_node(parent, index)
        self._depth -= 1
        if event.anchor is not None:
            self._sizes[event.anchor] = self._nodes - start
        if isinstance(node, MappingNode):
            self._check_keys(node)
        return node

    def _check_keys(self, node: MappingNode) -> None:
        """Explicit keys of one freshly composed mapping (before `<<` merges are flattened into it)."""
        first: dict[Any, tuple[Any, int]] = {}  # key -> (key, line)
        key_type: tuple[type, Any, int] | None = None
        for key_node, _ in node.value:
            line = key_node.start_mark.line + 1
            if key_node.tag == _MERGE_TAG:
                key: Any = "<<"
            elif not isinstance(key_node, ScalarNode):
                raise self._error(
                    key_node.start_mark,
                    f"a {key_node.id} used as a mapping key; keys are "
                    f"{'strings (field names)' if self.string_keys else 'scalars'}",
                )
            elif key_node.tag == _VALUE_TAG:
                key = "="
            else:
                key = self.construct_object(key_node, deep=True)
            if self.string_keys and not isinstance(key, str):
                raise self._error(
                    key_node.start_mark,
                    f"key {shorten(key)} is {_a(key)}, not a string; keys are field names (quote it if it is one)",
                )
            if key_type is None:
                key_type = (type(key), key, line)
            elif type(key) is not key_type[0]:
                raise self._error(
                    key_node.start_mark,
                    f"key {shorten(key)} is {_a(key)} but key "
                    f"{shorten(key_type[1])} (line {key_type[2]}) is "
                    f"{_a(key_type[1])}; one mapping's keys are all of one type",
                )
            if key in first:
                raise self._error(key_node.start_mark, f"key {shorten(key)} repeated (first at line {first[key][1]})")
            first[key] = (key, line)

    def construct_object(self, node: Any, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except YamlError:
            raise
        except (ValueError, OverflowError) as err:  # int() past 4,300 digits, a date like 2020-13-45
            raise self._error(
                node.start_mark,
                f"cannot read {_cut(node.tag.rpartition(':')[2], 30)} value "
                f"{shorten(getattr(node, 'value', None))} ({_cut(str(err))})",
            ) from None


def load_yaml_text(
    text: str,
    origin: str,
    *,
    string_keys: bool = True,
    max_depth: int = MAX_DEPTH,
    max_alias_nodes: int = MAX_ALIAS_NODES,
) -> Any:
    """The single YAML document in `text` (None when empty), as `yaml.safe_load` reads it, or a YamlError
    naming `origin` and the line (see the module docstring for what is refused)."""
    loader = None
    try:
        loader = _StrictLoader(text, origin, string_keys, max_depth, max_alias_nodes)  # checks characters
        return loader.get_single_data()
    except YamlError:
        raise
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        context = (
            f"; {err.context}" + (f" at line {err.context_mark.line + 1}" if err.context_mark else "")
            if err.context
            else ""
        )
        raise YamlError(
            origin, mark.line + 1 if mark else None, f"not valid YAML ({_cut(str(err.problem))}{_cut(context)})"
        ) from None
    except yaml.reader.ReaderError as err:  # a control character; its position is in characters
        line = text.count("\n", 0, err.position) + 1 if isinstance(text, str) else None
        code = err.character if isinstance(err.character, int) else ord(err.character)
        raise YamlError(origin, line, f"not valid YAML (control character #x{code:04x} is not allowed)") from None
    except yaml.YAMLError as err:
        raise YamlError(origin, None, f"not valid YAML ({_cut(str(err))})") from None
    except RecursionError:  # only when called with the stack nearly full already; the depth bound prevents it
        raise YamlError(origin, None, "nested too deeply to read") from None
    finally:
        if loader is not None:
            loader.dispose()


def read_yaml_file(path: str | os.PathLike[str], what: str = "YAML file", **options: Any) -> Any:
    """`load_yaml_text` of the file `path`; a missing, unreadable or special file (a FIFO is not waited on)
    or a byte that is not UTF-8 is a YamlError naming the file (worded as `xrstudy.config.read_yaml`)."""
    path = Path(path)
    try:
        data = read_regular_file(path)
    except NotRegularFileError:
        raise YamlError(str(path), None, f"not a regular file; expected a {what}") from None
    except FileNotFoundError:
        raise YamlError(str(path), None, f"no such {what}") from None
    except OSError as err:
        raise YamlError(str(path), None, f"cannot read the {what} ({err.strerror})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise YamlError(str(path), line, f"byte {data[err.start]:#04x} is not UTF-8; expected a UTF-8 {what}") from None
    return load_yaml_text(text, str(path), **options)


# ---- grids ----------------------------------------------------------------------------------------
def count_grid(grid: Mapping[str, Any]) -> int:
    """Cells of a `grid:` mapping, the product of its list lengths (a non-list value is one choice), without
    expanding anything. An empty grid is 1 cell (the block itself)."""
    return math.prod(len(values) if isinstance(values, (list, tuple)) else 1 for values in grid.values())


def check_grid_size(grid: Mapping[str, Any], where: str, limit: int = MAX_GRID_CELLS, counted: int = 0) -> int:
    """`counted + count_grid(grid)`, or a YamlError naming the block `where` (e.g. "sweep.yaml: transfer[2]")
    and its count when the block alone, or the sweep so far (`counted` cells of earlier blocks), exceeds
    `limit`. Call it before `itertools.product`, threading the return value through the blocks."""
    count = count_grid(grid)
    total = counted + count
    if total <= limit:
        return total
    sizes = _cut(" x ".join(f"{key} {len(v) if isinstance(v, (list, tuple)) else 1}" for key, v in grid.items()), 120)
    so_far = f", {total:,} with the {counted:,} before it," if counted and count <= limit else ""
    raise YamlError(
        where,
        None,
        f"grid of {count:,} cells ({sizes}){so_far} exceeds the limit of {limit:,} cells "
        f"per sweep; split the sweep or raise the limit (--max-grid-cells N)",
    )


__all__ = [
    "YamlError",
    "MAX_DEPTH",
    "MAX_ALIAS_NODES",
    "MAX_GRID_CELLS",
    "load_yaml_text",
    "read_yaml_file",
    "shorten",
    "count_grid",
    "check_grid_size",
]
