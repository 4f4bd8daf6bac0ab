"""The README runs: its first commands are what CI runs, and its Python blocks execute."""

import re
import subprocess
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
SKIP_MARK = "# not run by the tests"
WALK_MARK = "# your own data"  # run in order, in a folder of their own, by tests/test_own_data.py


def python_blocks() -> list[str]:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    return [block for block in blocks if not block.startswith((SKIP_MARK, WALK_MARK))]


def test_readme_opens_with_the_two_commands():
    first_block = re.search(r"```bash\n(.*?)```", README.read_text(), re.S).group(1)
    commands = [line for line in first_block.splitlines() if line.strip()]
    assert len(commands) == 2
    assert all(command.startswith("pip install torch==2.13.0 && ") for command in commands)
    assert "pytest" in commands[1]


def test_ci_runs_the_second_command():
    ci = (README.parent / ".ci" / "run").read_text()
    assert "README.md" in ci and "lines[1]" in ci


@pytest.mark.parametrize("block", python_blocks(), ids=lambda block: block.splitlines()[0][:40])
def test_python_block_runs(block):
    exec(compile(block, str(README), "exec"), {})


def test_printed_mask_matches_the_cli():
    shown = re.search(r'\$ aki mask "T M M M T T R R"\n(.*?)```', README.read_text(), re.S).group(1)
    result = subprocess.run(["aki", "mask", "T M M M T T R R"], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == shown.strip()
