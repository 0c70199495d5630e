"""The ``brainfm`` command: data subcommands and its help."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from brainfm import cli
from brainfm.cli import main


def test_info_json(small_sample, capsys):
    _, store = small_sample
    assert main(["info", str(store), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format_version"] == 3 and info["preset"] == "eeg-fm" and info["sfreq"] == 200.0
    assert info["subjects"] == 11 and info["recordings"] == 16
    assert info["channel_type_counts"]["mag"] > 0 and info["total_hours"] > 0.1


def test_info_text(small_sample, capsys):
    _, store = small_sample
    assert main(["info", str(store)]) == 0
    out = capsys.readouterr().out
    assert "recordings" in out and "eeg: " in out


def test_info_on_a_non_store_is_a_clear_error(tmp_path, capsys):
    assert main(["info", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a brainfm store" in err and "--debug" in err
    with pytest.raises(FileNotFoundError, match="not a brainfm store"):
        main(["info", str(tmp_path), "--debug"])


def test_verify(small_sample, capsys):
    _, store = small_sample
    assert main(["verify", str(store)]) == 0
    assert "16 recording(s) checked (SHA-256), 0 damaged" in capsys.readouterr().out
    assert main(["verify", str(store), "--quick", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["ok"] and result["checked"] == 16 and result["problems"] == {}


def test_console_script_help():
    out = subprocess.run([sys.executable, "-m", "brainfm.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "convert" in out.stdout and "sample-data" in out.stdout


def test_ctrl_c_during_training_exits_130(monkeypatch, capsys):
    """Lightning handles Ctrl-C itself (graceful shutdown, then exit(1)); the CLI reports it as 130."""
    def interrupted_fit(args):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            sys.exit(1)

    monkeypatch.setattr(cli, "lightning_main", interrupted_fit)
    assert main(["fit", "--config", "x.yaml"]) == 130
    assert capsys.readouterr().err == "brainfm fit: interrupted\n"
    monkeypatch.setattr(cli, "lightning_main", lambda args: sys.exit(2))  # e.g. a bad config: argparse's exit
    with pytest.raises(SystemExit):
        main(["fit", "--config", "x.yaml"])
