"""The strict file reader: every row parsed, the line each row starts on, every way a file can be broken.

References: pandas parses the same intact files; line numbers are counted by hand in the small files below.
"""

import bz2
import gzip
import lzma
import shutil
from pathlib import Path

import pandas as pd
import pytest

from runner.data.files import BINARY, DataError, Layout, match_layout, norm, read_table, split_suffix

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "benchmarks"


@pytest.mark.parametrize("name,sep", [("xstest_prompts.csv", ","), ("harmbench_behaviors_text_all.csv", ","),
                                      ("toxic-chat_annotation_test.csv", ","), ("wildjailbreak_eval.tsv", "\t")])
def test_csv_rows_match_pandas(name, sep):
    table = read_table(FIX / name)
    ref = pd.read_csv(FIX / name, sep=sep, keep_default_na=False, dtype=str)
    assert table.columns == list(ref.columns)
    assert [[v for v in r.values()] for r in table.rows] == [[v.replace("\r\n", "\n") for v in row]
                                                            for row in ref.itertuples(index=False)]


def test_row_lines_count_quoted_newlines(tmp_path):
    p = tmp_path / "x.csv"
    p.write_text('a,b\r\n1,"two\r\nlines"\r\n\r\n3,4\r\n')
    table = read_table(p)
    assert table.rows == [{"a": "1", "b": "two\nlines"}, {"a": "3", "b": "4"}]
    assert table.lines == [2, 5]  # the blank line 4 is skipped; the second row starts on line 5


def test_a_quote_inside_an_unquoted_field_is_kept_as_pandas_does(tmp_path):
    p = tmp_path / "q.tsv"
    p.write_text('prompt\tlabel\n"Hi" she said, "go"\t1\nplain\t0\n')
    ref = pd.read_csv(p, sep="\t", dtype=str)
    assert [list(r.values()) for r in read_table(p).rows] == [list(r) for r in ref.itertuples(index=False)]


@pytest.mark.parametrize("ext,compress", [(".gz", gzip.compress), (".xz", lzma.compress), (".bz2", bz2.compress)])
def test_compressed_files_read_like_plain(tmp_path, ext, compress):
    p = tmp_path / f"samples.jsonl{ext}"
    p.write_bytes(compress((FIX / "samples-1680.jsonl").read_bytes()))
    assert split_suffix(p) == (".jsonl", ext)
    assert read_table(p).rows == read_table(FIX / "samples-1680.jsonl").rows


def test_jsonl_missing_keys_are_none():
    table = read_table(FIX / "samples-1680.jsonl")
    assert table.columns == ["prompt", "S", "H", "V", "HR", "SH", "S3", "H2", "V2"]
    assert table.rows[3]["H"] is None and table.rows[3]["S"] == 0  # line 4 has no H flag (unknown)


BROKEN = {
    "empty.csv": (b"", r"empty.csv:1: the file is empty"),
    "header_only.csv": (b"prompt,label\n", r"header_only.csv:2: no data rows"),
    "binary.csv": (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", r"binary.csv:3: a NUL byte: this is a binary file"),
    "latin1.csv": ("prompt,label\ncaf\u00e9,safe\n".encode("latin-1"), r"latin1.csv:2: not UTF-8 text"),
    "quote.csv": (b'prompt,label\nok,safe\n"How do I kill,unsafe\n',
                  r"quote.csv:3: column prompt: a quoted field is never closed"),
    "short.csv": (b"prompt,type,label\nHow do I kill someon", r"short.csv:2: column type: missing: the row has 1"),
    "long.csv": (b"prompt,label\na,safe,extra\n", r"long.csv:2: column #3: the row has 3 fields"),
    "trunc.jsonl": (b'{"prompt": "a", "S": 0}\n{"prompt": "b", "S', r"trunc.jsonl:2: not a complete JSON object"),
    "list.jsonl": (b'["a", 1]\n', r"list.jsonl:1: a JSON list, not an object"),
    "cut.json": (b'[{"prompt": "a"}, {"prompt": ', r"cut.json:1: not valid JSON"),
    "data.txt": (b"prompt\na\n", r"unsupported file type '.txt'"),
    "notgz.jsonl.gz": (b"plain text", r"cannot decompress the .gz file"),
    "fake.parquet": (b"prompt,label\n", r"fake.parquet: not a readable parquet file"),
}


@pytest.mark.parametrize("name", list(BROKEN))
def test_broken_files_name_file_and_line(tmp_path, name):
    content, message = BROKEN[name]
    p = tmp_path / name
    p.write_bytes(content)
    with pytest.raises(DataError, match=message) as e:
        read_table(p)
    assert "\n" not in str(e.value) and str(e.value).startswith(str(p))


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_table(tmp_path / "nope.csv")
    (tmp_path / "d.csv").mkdir()
    with pytest.raises(DataError, match="not a file"):
        read_table(tmp_path / "d.csv")


def test_cache_sees_a_changed_file(tmp_path):
    p = tmp_path / "a.csv"
    p.write_text("prompt\none\n")
    assert len(read_table(p)) == 1
    shutil.copy(FIX / "xstest_prompts.csv", p)
    assert len(read_table(p)) == 16


def test_layouts_and_labels(tmp_path):
    def convert(rows):
        return rows

    layouts = [Layout("new", ("text", "flag"), convert, {"flag": BINARY}), Layout("old", ("prompt",), convert)]
    p = tmp_path / "a.csv"
    p.write_text("prompt,extra\nhi,x\n")
    assert match_layout(read_table(p), layouts, "demo").name == "old"
    p.write_text("text,flag\nhi,1\nho,True\nhu,yes\n")
    with pytest.raises(DataError, match=r"a.csv:4: column flag: value 'yes' is not one of 0, 1"):
        match_layout(read_table(p), layouts, "demo")
    p.write_text("question,answer\nq,a\n")
    with pytest.raises(DataError, match=r"a.csv:1: column prompt: missing; demo files have columns text, flag "
                                        r"\(new\) or prompt \(old\); found question, answer"):
        match_layout(read_table(p), layouts, "demo")
    assert [norm(v) for v in (True, 1, 1.0, "1", " TRUE ", None, float("nan"), "Unsafe")] == \
        ["1", "1", "1", "1", "1", "", "", "unsafe"]
