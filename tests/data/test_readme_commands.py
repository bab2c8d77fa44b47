"""Every command line of README.md composes, validates and passes preflight (data files replaced by fixtures).

Commands are the `python -m runner ...` lines of code blocks (continuation lines joined) and the inline
`+recipe=...` spans (alternatives `a|b|c` expanded). Placeholders (NAME, FILE, DIR, path/to/...) become a
recipe, the benchmark fixture of the command's dataset option, or a temporary file or folder.
"""

import re
import shlex
from pathlib import Path

import pytest

from runner.core.cli import _compose_job, _expand_jobs, preflight
from runner.data.preflight import data_files
from tests.fixtures.benchmarks import FIX, FIXTURES

ROOT = Path(__file__).resolve().parents[2]
PLACEHOLDER = re.compile(r"^(FILE|DIR|PATH|\.\.\.|/?path/to/.*|/local/.*)$")

def readme_commands() -> list[tuple[int, str]]:
    """(line number, arguments) of every command in README.md."""
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    out: list[tuple[int, str]] = []
    i = 0
    while i < len(lines):
        start, line = i, lines[i]
        while line.rstrip().endswith("\\") and i + 1 < len(lines):
            i += 1
            line = line.rstrip()[:-1] + " " + lines[i].strip()
        m = re.search(r"(?<!`)python -m runner\s+(\S.*)$", line)
        if m:
            out.append((start + 1, m.group(1)))
        for span in re.findall(r"`(\+recipe=[^`]+)`", line):
            first, _, rest = span.partition(" ")
            out += [(start + 1, f"+recipe={name} {rest}") for name in first.split("=", 1)[1].split("|")]
        i += 1
    return out


COMMANDS = readme_commands()


def _argv(args: str) -> list[str]:
    tokens = shlex.split(args, comments=True)
    tokens = [t for t in tokens if not (t.startswith("[") or t.endswith("]"))]  # syntax: [key=value ...]
    return [t.replace("+recipe=NAME", "+recipe=smoke") for t in tokens]


def _substitute(argv: list[str], tmp_path: Path) -> list[str]:
    """Placeholders → the dataset option's benchmark fixture, else a temporary folder (DIR) or file."""
    placeholder = {t.split("=", 1)[0]: t.split("=", 1)[1] for t in argv
                   if "=" in t and PLACEHOLDER.match(t.split("=", 1)[1])}
    local = {}
    for key, value in placeholder.items():
        local[key] = tmp_path / key.replace(".", "_")
        local[key].mkdir() if value == "DIR" else local[key].write_text("placeholder\n")
    out = [f"{t.split('=', 1)[0]}={local[t.split('=', 1)[0]]}" if t.split("=", 1)[0] in local else t for t in argv]
    cfg = _compose_job(_expand_jobs([a for a in out if not a.startswith("-")], "-m" in out)[0])
    if "dataset.path" in local and cfg.dataset.name in FIXTURES:
        out = [f"dataset.path={FIX / FIXTURES[cfg.dataset.name][0]}" if t.startswith("dataset.path=") else t
               for t in out]
    return out

def test_readme_has_the_commands_this_test_relies_on():
    args = [a for _, a in COMMANDS]
    assert len(COMMANDS) >= 20
    assert any("dataset=xstest dataset.path=" in a for a in args)
    assert any("dataset=moderation_openai dataset.path=" in a for a in args)
    assert any(a.startswith("+recipe=fedbuff_sent140 dataset.path=DIR") for a in args)


@pytest.mark.parametrize("line,args", COMMANDS, ids=[f"L{n}:{a.split()[0]}" for n, a in COMMANDS])
def test_readme_command_passes_preflight(tmp_path, capsys, monkeypatch, line, args):
    monkeypatch.chdir(tmp_path)  # a relative run directory could only appear here
    argv = _substitute(_argv(args), tmp_path)
    try:
        preflight(argv)
    except SystemExit:
        pytest.fail(f"README.md:{line}: `python -m runner {args}` fails: {capsys.readouterr().err.strip()}")
    if any(a.startswith("dataset.path=") for a in argv):
        cfg = _compose_job(_expand_jobs([a for a in argv if not a.startswith("-")], "-m" in argv)[0])
        paths = [Path(p) for _, p in data_files(cfg.dataset)]
        if cfg.dataset.name in FIXTURES:  # preflight read the benchmark fixture in place of the user's file
            assert paths == [FIX / FIXTURES[cfg.dataset.name][0]]
    assert all(p.name in ("dataset_path", "model_path") for p in tmp_path.iterdir())  # no run directory
