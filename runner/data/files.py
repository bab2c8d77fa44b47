"""One strict reader for local data files, and the column layouts benchmark files are checked against.

:func:`read_table` reads ``.csv``, ``.tsv``, ``.jsonl``, ``.json`` and ``.parquet`` files, each optionally
compressed (``.gz``, ``.xz``, ``.bz2``), into a :class:`Table` that remembers the line each row starts on.
It reads the whole file and fails on anything a benchmark file should not be: a missing or empty file, a
binary file or one that is not UTF-8, a CSV cut inside a quoted field or with a row shorter than its header,
a JSONL line that is not a complete JSON object. :func:`match_layout` then checks the columns against a
benchmark's published (or mirror) layouts and the label columns against their allowed values.

Every failure is a :class:`DataError`, a :class:`~runner.core.errors.ConfigError` whose one-line message
reads ``FILE:LINE: column C: what is wrong``, so the CLI reports it as a configuration error (exit 2).
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
import lzma
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.core.errors import ConfigError

FORMATS = (".csv", ".tsv", ".jsonl", ".json", ".parquet")
_DECOMPRESS: dict[str, Callable[[bytes], bytes]] = {".gz": gzip.decompress, ".xz": lzma.decompress,
                                                    ".bz2": bz2.decompress}
Row = dict[str, Any]
csv.field_size_limit(2**31 - 1)  # long jailbreak prompts and HarmBench contexts exceed the 128 KiB default


class DataError(ConfigError):
    """A data file that cannot be used as configured: ``FILE:LINE: column C: what is wrong``."""

    def __init__(self, path: str | Path, line: int | str | None, what: str, column: str | None = None):
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: column {column}: {what}" if column else f"{where}: {what}")
        self.path, self.line, self.column = str(path), line, column


@dataclass
class Table:
    """The rows of one file: column names in file order, rows as dicts, the line each row starts on.

    CSV/TSV cells are strings (empty cells ``""``); JSON values keep their JSON types (a key missing from a
    JSONL object is ``None``); parquet values are Python scalars and lists (nulls ``None``). ``lines`` holds
    the 1-based line of each row in text files and ``row N`` (1-based) in parquet / JSON-array files.
    """

    path: Path
    columns: list[str]
    rows: list[Row]
    lines: list[int | str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rows)

    def where(self, i: int) -> int | str:
        return self.lines[i] if i < len(self.lines) else f"row {i + 1}"


def split_suffix(path: str | Path) -> tuple[str, str]:
    """(format, compression) of a file name: ``x.jsonl.gz`` → (``.jsonl``, ``.gz``); compression may be ``""``."""
    suffixes = [s.lower() for s in Path(path).suffixes]
    compression = suffixes.pop() if suffixes and suffixes[-1] in _DECOMPRESS else ""
    return (suffixes[-1] if suffixes else ""), compression


_CACHE: dict[tuple[str, int, int], Table] = {}


def read_table(path: str | Path) -> Table:
    """Read and fully parse a local data file (cached on path, size and mtime; see the module docstring)."""
    p = Path(path)
    fmt, compression = split_suffix(p)
    if fmt not in FORMATS:
        raise DataError(p, None, f"unsupported file type '{''.join(Path(p).suffixes) or p.name}' (use "
                                 f"{', '.join(FORMATS)}, optionally compressed: {', '.join(_DECOMPRESS)})")
    if not p.is_file():
        raise DataError(p, None, "no such file" if not p.exists() else "not a file")
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _CACHE:
        _CACHE.clear()  # keep one table: preflight reads it, the run reuses it in the same process
        _CACHE[key] = _read(p, fmt, compression)
    return _CACHE[key]


def _read(p: Path, fmt: str, compression: str) -> Table:
    data = p.read_bytes()
    if compression:
        try:
            data = _DECOMPRESS[compression](data)
        except (OSError, EOFError, lzma.LZMAError, ValueError) as e:
            raise DataError(p, None, f"cannot decompress the {compression} file ({e})") from None
    if not data.strip():
        raise DataError(p, 1, "the file is empty")
    if fmt == ".parquet":
        return _read_parquet(p, data)
    text = _decode(p, data)
    if fmt in (".csv", ".tsv"):
        return _read_csv(p, text, "\t" if fmt == ".tsv" else ",")
    if fmt == ".jsonl" or (fmt == ".json" and not text.lstrip().startswith("[")):
        return _read_jsonl(p, text)
    return _read_json_array(p, text)


def _decode(p: Path, data: bytes) -> str:
    nul = data.find(b"\x00", 0, 8192)  # binary formats (gzip, parquet, executables) show NUL bytes early
    if nul >= 0:
        raise DataError(p, data.count(b"\n", 0, nul) + 1, "a NUL byte: this is a binary file, not text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(p, line, f"not UTF-8 text (byte 0x{data[e.start]:02x}); is it a binary or "
                                 "differently encoded file?") from None


def _read_csv(p: Path, text: str, delimiter: str) -> Table:
    """Parse as pandas does (a quote inside an unquoted field is kept), then check what pandas lets pass: the
    file must not end inside a quoted field, and every row must have the header's number of fields."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=False)
    records: list[tuple[int, list[str]]] = []
    start = 1
    try:
        for cells in reader:
            line, start = start, reader.line_num + 1
            if cells and not (len(cells) == 1 and not cells[0].strip() and records):  # skip blank lines
                records.append((line, cells))
    except csv.Error as e:
        raise DataError(p, start, f"malformed {'TSV' if delimiter == chr(9) else 'CSV'} ({e})") from None
    if not records:
        raise DataError(p, 1, "the file is empty")
    (_, header), body = records[0], records[1:]
    columns = [c.strip() for c in header]
    dup = [c for c in columns if c and columns.count(c) > 1]
    if dup:
        raise DataError(p, 1, "appears twice in the header", dup[0])
    last_line, last = records[-1]
    if _ends_inside_quotes(text, last_line, delimiter):
        raise DataError(p, last_line, "a quoted field is never closed (the file ends inside it: cut short?)",
                        columns[min(len(last), len(columns)) - 1])
    if not body:
        raise DataError(p, 2, "no data rows after the header")
    for line, cells in body:
        if len(cells) < len(columns):
            raise DataError(p, line, f"missing: the row has {len(cells)} of the header's {len(columns)} "
                                     "fields (a row cut short?)", columns[len(cells)])
        if len(cells) > len(columns) and any(c.strip() for c in cells[len(columns):]):
            raise DataError(p, line, f"the row has {len(cells)} fields, the header {len(columns)}",
                            f"#{len(columns) + 1}")
    rows = [{c: v.replace("\r\n", "\n") for c, v in zip(columns, cells)} for _, cells in body]
    return Table(p, columns, rows, [line for line, _ in body])


def _ends_inside_quotes(text: str, line: int, delimiter: str) -> bool:
    """Whether the record starting at ``line`` (the last one) runs into the end of the file inside quotes."""
    tail = "".join(text.splitlines(keepends=True)[line - 1:])
    try:
        list(csv.reader(io.StringIO(tail, newline=""), delimiter=delimiter, strict=True))
    except csv.Error as e:
        return "end of data" in str(e)
    return False


def _read_jsonl(p: Path, text: str) -> Table:
    rows: list[Row] = []
    lines: list[int | str] = []
    for i, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as e:
            raise DataError(p, i, f"not a complete JSON object ({e.msg}, character {e.colno}): a truncated "
                                  "line?") from None
        if not isinstance(obj, dict):
            raise DataError(p, i, f"a JSON {type(obj).__name__}, not an object with named fields")
        rows.append(obj)
        lines.append(i)
    return _from_records(p, rows, lines)


def _read_json_array(p: Path, text: str) -> Table:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(p, e.lineno, f"not valid JSON ({e.msg}; cut short?)") from None
    bad = next((i for i, r in enumerate(data) if not isinstance(r, dict)), None)
    if bad is not None:
        raise DataError(p, f"row {bad + 1}", "not a JSON object with named fields")
    return _from_records(p, data, [f"row {i + 1}" for i in range(len(data))])


def _from_records(p: Path, rows: list[Row], lines: list[int | str]) -> Table:
    if not rows:
        raise DataError(p, 1, "no records")
    columns: dict[str, None] = {}
    for r in rows:
        columns.update(dict.fromkeys(r))
    return Table(p, list(columns), [{c: r.get(c) for c in columns} for r in rows], lines)


def _read_parquet(p: Path, data: bytes) -> Table:
    try:
        import pyarrow.parquet as pq

        table = pq.read_table(io.BytesIO(data))
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError for a file that is not parquet
        raise DataError(p, None, f"not a readable parquet file ({str(e).splitlines()[0]})") from None
    rows = table.to_pylist()
    if not rows:
        raise DataError(p, "row 1", "no rows")
    return Table(p, list(table.column_names), rows, [f"row {i + 1}" for i in range(len(rows))])


# --------------------------------------------------------------------------- layouts and labels
def norm(v: Any) -> str:
    """A cell as a comparable label: ``True``/``1``/``1.0``/``"1"`` → ``"1"``, ``None``/NaN → ``""``, text lowered."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    s = str(v).strip().lower()
    return {"true": "1", "false": "0", "1.0": "1", "0.0": "0"}.get(s, s)


BINARY = frozenset({"0", "1"})


@dataclass(frozen=True)
class Layout:
    """One column layout of a benchmark file: the required columns, the allowed (normalised, see :func:`norm`)
    values of its label columns, and ``convert``, which turns the file's rows into records."""

    name: str
    required: tuple[str, ...]
    convert: Callable[[list[Row]], list[Any]]
    labels: Mapping[str, frozenset[str]] = field(default_factory=dict)


def match_layout(table: Table, layouts: Sequence[Layout], benchmark: str) -> Layout:
    """The first layout whose required columns the file has (labels checked); DataError naming expected vs found."""
    for layout in layouts:
        if all(c in table.columns for c in layout.required):
            check_labels(table, layout)
            return layout
    best = min(layouts, key=lambda lay: sum(c not in table.columns for c in lay.required))
    missing = [c for c in best.required if c not in table.columns]
    expected = " or ".join(f"{', '.join(lay.required)} ({lay.name})" for lay in layouts)
    raise DataError(table.path, 1, f"missing; {benchmark} files have columns {expected}; found "
                                   f"{', '.join(table.columns) or 'none'}", missing[0])


def check_labels(table: Table, layout: Layout) -> None:
    """Every value of the layout's label columns must be in its allowed set."""
    for col, allowed in layout.labels.items():
        if col not in table.columns:
            continue
        for i, r in enumerate(table.rows):
            if norm(r[col]) not in allowed:
                shown = ", ".join(sorted(a or "(empty)" for a in allowed))
                value = repr(r[col]) if len(repr(r[col])) <= 60 else repr(r[col])[:57] + "..."
                raise DataError(table.path, table.where(i), f"value {value} is not one of {shown}", col)
