"""The README and the guides under docs/ as tests: every code block runs as written, so text and code cannot drift.

- ``python`` blocks of one document run in order, in one namespace (a later block uses what an
  earlier one defined), in a fresh working directory.
- ``bash`` blocks are commands for a shell: each ``pip install -e '.[extras]'`` names extras that
  exist, each ``python -m experiments.<study>`` names a study and only flags it defines, and the
  README's two set-up commands are the ones ``.ci/run`` runs.
- No other kind of fenced block is allowed: a block that nothing runs is a block that can rot.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
import re
import shlex
import subprocess
import sys
import tomllib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LANGUAGES = ("python", "bash")
PROGRAMS = {"tensorboard"}  # commands of an extra's own package that a block may show


@dataclasses.dataclass(frozen=True)
class Block:
    language: str
    code: str
    line: int  # of the opening fence, 1-based


def code_blocks(path: pathlib.Path) -> list[Block]:
    """The fenced blocks of a Markdown file, with their language and first line."""
    blocks, lines = [], path.read_text(encoding="utf-8").splitlines()
    opening = None
    for number, line in enumerate(lines, start=1):
        if line.startswith("```"):
            if opening is None:
                opening, body = (line[3:].strip(), number), []
            else:
                blocks.append(Block(opening[0], "\n".join(body) + "\n", opening[1]))
                opening = None
        elif opening is not None:
            body.append(line)
    assert opening is None, f"{path.name}:{opening[1]}: a code block is never closed"
    return blocks


def _name(path: pathlib.Path) -> str:
    return str(path.relative_to(ROOT))


def test_documents_keep_their_sizes() -> None:
    assert len((ROOT / "README.md").read_text().splitlines()) <= 300
    assert len((ROOT / "WORKSPACE.md").read_text().splitlines()) <= 400


@pytest.mark.parametrize("path", DOCUMENTS, ids=_name)
def test_every_code_block_is_one_the_tests_run(path) -> None:
    for block in code_blocks(path):
        assert block.language in LANGUAGES, (
            f"{_name(path)}:{block.line}: a ```{block.language} block; only {LANGUAGES} blocks are run by the tests"
        )


PYTHON_DOCUMENTS = [path for path in DOCUMENTS if any(b.language == "python" for b in code_blocks(path))]


@pytest.mark.parametrize("path", PYTHON_DOCUMENTS, ids=_name)
def test_python_blocks_run_as_written(path, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": f"docs_{path.stem.lower()}"}
    for block in code_blocks(path):
        if block.language != "python":
            continue
        try:
            exec(compile(block.code, f"{_name(path)}:{block.line}", "exec"), namespace)
        except Exception as error:
            raise AssertionError(f"the block at {_name(path)}:{block.line} failed: {error!r}") from error
    assert capsys.readouterr().out  # the blocks print what they show


def _commands(block: Block) -> list[str]:
    """The shell commands of a bash block: comments dropped, ``a && b`` split."""
    commands = []
    for line in block.code.splitlines():
        line = line.split(" #")[0].strip()
        if line and not line.startswith("#"):
            commands += [part.strip() for part in line.split("&&")]
    return commands


@functools.lru_cache(maxsize=None)
def _flags_of(module: str) -> frozenset[str]:
    """Every flag ``python -m experiments.<module> --helpfull`` lists."""
    shown = subprocess.run([sys.executable, "-m", f"experiments.{module}", "--helpfull"], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    return frozenset(re.findall(r"^\s+--(?:\[no\])?([\w-]+):", shown.stdout, re.MULTILINE))


def _check_command(command: str, where: str) -> None:
    words = shlex.split(command)
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    if words[:3] == ["pip", "install", "-e"]:
        match = re.fullmatch(r"\.\[([\w,-]+)\]", words[3])
        assert match and len(words) == 4, f"{where}: {command!r} is not pip install -e '.[extras]'"
        assert set(match[1].split(",")) <= extras, f"{where}: {command!r} names an extra that pyproject lacks"
    elif words[:3] == ["python", "-m", "pytest"]:
        pass
    elif words[:2] == ["python", "-m"] and words[2].startswith("experiments."):
        module = words[2].removeprefix("experiments.")
        assert (ROOT / "experiments" / f"{module}.py").is_file(), f"{where}: no study {module}"
        used = {word[2:].split("=")[0] for word in words[3:] if word.startswith("--")}
        unknown = used - _flags_of(module)
        assert not unknown, f"{where}: {command!r} passes flags the study does not define: {sorted(unknown)}"
    else:
        assert words[0] in PROGRAMS, f"{where}: {command!r} is not a command the docs test knows how to check"


@pytest.mark.parametrize("path", DOCUMENTS, ids=_name)
def test_bash_blocks_name_real_extras_studies_and_flags(path) -> None:
    for block in code_blocks(path):
        if block.language == "bash":
            for command in _commands(block):
                _check_command(command, f"{_name(path)}:{block.line}")


def test_the_readme_set_up_commands_are_the_ones_ci_runs() -> None:
    first = next(b for b in code_blocks(ROOT / "README.md") if b.language == "bash")
    set_up = [line for line in first.code.splitlines() if line.startswith("pip install")]
    assert len(set_up) == 2 and "experiments.sweep" in set_up[0] and "pytest" in set_up[1]
    ci = (ROOT / ".ci" / "run").read_text()
    main_job, tests = set_up
    assert f"{main_job} --" in ci  # the main job as written, then small flags
    assert f"{tests}\n" in ci  # the test command exactly
