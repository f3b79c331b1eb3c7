"""The rledger command line: a real run, and exit code 2 with nothing written on bad input."""

from __future__ import annotations

from click.testing import CliRunner

from rledger.cli import main


def test_train_writes_ledger_and_summary(tmp_path):
    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["train", "--env", "CartPole-v1", "--timesteps", "256", "--n-steps", "128",
                                    "--out", str(out)])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "samples" in res.output and (out / "run.json").is_file()
    again = CliRunner().invoke(main, ["summary", str(out)])
    assert again.exit_code == 0 and "transitions" in again.output


def test_bad_input_exit_2_nothing_written(tmp_path):
    runner = CliRunner()
    out = tmp_path / "x"
    for args, needle in [
        (["--env", "Nope-v0", "--timesteps", "10"], "--env"),
        (["--env", "CartPole-v1", "--timesteps", "-5"], "--timesteps"),
        (["--env", "CartPole-v1", "--timesteps", "10", "--info-key", "return"], "collides"),
    ]:
        res = runner.invoke(main, ["train", *args, "--out", str(out)])
        assert res.exit_code == 2, res.output
        assert needle in res.output
        assert not out.exists()
    res = runner.invoke(main, ["summary", str(tmp_path / "missing")])
    assert res.exit_code == 2 and "run.json" in res.output


def test_existing_run_not_clobbered(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    res = CliRunner().invoke(main, ["train", "--env", "CartPole-v1", "--timesteps", "10", "--out", str(out)])
    assert res.exit_code == 2 and "--overwrite" in res.output
    assert (out / "keep.txt").read_text() == "mine" and len(list(out.iterdir())) == 1


def test_python_dash_m_knows_every_command():
    """`python -m rledger.cli` (what the benchmarks call) registers the same commands as the script."""
    import subprocess
    import sys

    from rledger.cli import main

    out = subprocess.run(
        [sys.executable, "-m", "rledger.cli", "--help"], capture_output=True, text=True
    ).stdout
    assert main.commands and all(name in out for name in main.commands)


def test_every_option_has_help_and_every_command_an_example():
    import click

    from rledger.cli import main

    for name, cmd in main.commands.items():
        missing = [p.opts[0] for p in cmd.params if isinstance(p, click.Option) and not p.help]
        assert not missing, f"rledger {name}: options without help: {missing}"
        text = CliRunner().invoke(main, [name, "--help"]).output
        assert "Example" in text and f"rledger {name} " in text.split("Example", 1)[1], name
