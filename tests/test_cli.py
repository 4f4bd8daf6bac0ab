"""The `aki` command line."""

from typer.testing import CliRunner

from aki.cli import app

runner = CliRunner()


def test_help_lists_the_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "mask" in result.output


def test_mask_prints_the_allow_matrix():
    result = runner.invoke(app, ["mask", "T M T R"])
    assert result.exit_code == 0, result.output
    rows = result.output.strip().splitlines()
    assert rows[0].split() == ["T", "M", "T", "R"]
    assert rows[1:] == ["  T ■ · · ·", "  M ■ ■ ■ ·", "  T ■ ■ ■ ·", "  R ■ ■ ■ ■"]


def test_mask_with_padding_and_the_causal_comparison():
    padded = runner.invoke(app, ["mask", "T M T R", "--padding", "0 1 1 1"])
    assert padded.output.strip().splitlines()[2] == "  M · ■ ■ ·"
    causal = runner.invoke(app, ["mask", "T M T R", "--causal"])
    assert causal.output.strip().splitlines()[2] == "  M ■ ■ · ·"


def test_mask_saves_a_png(tmp_path):
    target = tmp_path / "mask.png"
    result = runner.invoke(app, ["mask", "T M M T T R R", "-o", str(target)])
    assert result.exit_code == 0, result.output
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_layouts_and_padding_are_refused_by_name():
    result = runner.invoke(app, ["mask", "T Q"])
    assert result.exit_code == 2
    assert "unknown role letters ['Q']" in result.output
    result = runner.invoke(app, ["mask", "T M", "--padding", "1"])
    assert result.exit_code == 2
    assert "--padding needs 2 values" in result.output
