"""The README runs: its first commands are what CI runs, its Python blocks execute, every shell command parses."""

import re
import shlex
import subprocess
from importlib.metadata import metadata
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


# --------------------------------------------------------------------------------------------------
# Every shell command of the README parses (its Python blocks run, above)
# --------------------------------------------------------------------------------------------------


def readme_commands() -> list[str]:
    """Every command of the README's bash blocks (continued lines joined, ``&&`` chains split, comments dropped)
    and its ``$`` lines; not the section "Your own data", whose commands tests/test_own_data.py runs."""
    before, walk = README.read_text().split("## Your own data", 1)
    text = before + walk.split("\n## ", 1)[1]
    blocks = [block.replace("\\\n", " ") for block in re.findall(r"```bash\n(.*?)```", text, re.S)]
    lines = [line for block in blocks for line in block.splitlines()]
    lines += re.findall(r"^\$ (.+)$", text, re.M)
    commands = []
    for line in lines:
        words = shlex.split(line, comments=True)
        while words:
            cut = words.index("&&") if "&&" in words else len(words)
            commands.append(shlex.join(words[:cut]))
            words = words[cut + 1 :]
    return commands


def parse_cli(command, args: list[str], name: str) -> None:
    """Parse ``args`` as the typer app's command line would, down to the leaf command, without running it."""
    while True:
        context = command.make_context(name, list(args))
        if not hasattr(command, "get_command"):
            return
        name, args = args[0], context.args  # aki's groups take no options of their own
        command = command.get_command(context, name)
        assert command is not None, f"no command {name!r}"


def check_aki(args: list[str], config=None) -> None:
    import typer

    from aki.cli import app

    parse_cli(typer.main.get_command(app), args, "aki")
    if args[:1] == ["train"]:  # the overrides too: the stage's config resolves
        from typer.testing import CliRunner

        result = CliRunner().invoke(app, [*args, "--print-config"])
        assert result.exit_code == 0, result.output


def check_accelerate(args: list[str], config) -> None:
    from accelerate.commands.launch import launch_command_parser

    assert args[0] == "launch"
    launched = launch_command_parser().parse_args(args[1:])
    assert launched.module and launched.training_script == "aki.train.cli", launched
    check_aki(["train", *launched.training_script_args], config)


def check_pip(args: list[str], config) -> None:
    assert args[0] == "install"
    for requirement in args[1:]:
        if requirement.startswith(".["):  # the project's own extras must exist
            extras = requirement.removeprefix(".[").removesuffix("]").split(",")
            assert set(extras) <= set(metadata("aki").get_all("Provides-Extra")), requirement


def check_python(args: list[str], config) -> None:
    assert args[:2] == ["-m", "pytest"], args
    known = {marker.split(":")[0] for marker in config.getini("markers")}
    expression = args[args.index("-m", 2) + 1] if "-m" in args[2:] else ""
    used = set(re.findall(r"\w+", expression)) - {"not", "and", "or"}
    assert used <= known, f"unknown markers {used - known}"


def check_script(args: list[str], config) -> None:
    assert (README.parent / args[0]).is_file(), args


CHECKS = {
    "aki": check_aki,
    "accelerate": check_accelerate,
    "pip": check_pip,
    "python": check_python,
    "bash": check_script,
    "source": lambda args, config: None,  # activates the venv the command before it made
    "export": lambda args, config: (
        all(re.fullmatch(r"[A-Z_]+=\S+", a) for a in args) or pytest.fail(str(args))
    ),
}


@pytest.mark.parametrize("command", readme_commands())
def test_readme_command_parses(command, pytestconfig):
    program, *args = shlex.split(command)
    assert program in CHECKS, f"the README runs {program!r}, which this test does not check yet: add a check"
    CHECKS[program](args, pytestconfig)
