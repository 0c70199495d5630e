"""The ``brainfm`` command: data subcommands and its help."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from brainfm import cli
from brainfm.cli import main

ROOT = Path(__file__).resolve().parent.parent


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


def test_a_config_class_that_fails_to_build_shows_its_own_error(tmp_path, monkeypatch, capsys):
    """jsonargparse reports a failed constructor as "Does not validate against any of the Union
    subtypes" with the reason on later lines; the one line a person reads is the constructor's."""
    monkeypatch.chdir(tmp_path)  # nothing in the repository is written
    monkeypatch.setattr(sys, "argv", ["brainfm"])  # LightningCLI warns when both argv and args hold arguments
    config = ROOT / "configs" / "finetune" / "eegmat-reset.yaml"
    assert main(["fit", "--config", str(config), "--data.adapt_subjects", "[eegmat33]"]) == 1
    err = capsys.readouterr().err
    assert "mode='reset' adapts a fine-tuned decoder: give init_from" in err and "Union" not in err
    assert main(["fit", "--config", str(config), "--model.init_from", "weights/decoder.safetensors"]) == 1
    assert f"no such weights file: weights/decoder.safetensors (relative to the working directory {tmp_path})" \
        in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (("adapt", "--ckpt", "d.safetensors", "--store", "s", "--subjects", "x", "--out", "d.safetensors"),
     "--out must be a new file"),
    (("adapt", "--ckpt", "d.safetensors", "--store", "s", "--subjects", "x", "--out", "a.ckpt"),
     "written as .safetensors"),
    (("detect", "r.edf", "--out", "o", "--subject", "x"),
     "--subject chooses the decoder's subject layers: it needs --model"),
], ids=["adapt-in-place", "adapt-ckpt", "subject-without-model"])
def test_subject_options_are_checked_first(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    assert main(list(args)) == 2
    assert message in capsys.readouterr().err


def test_a_window_other_than_the_decoders_is_one_warning_line(small_sample, tmp_path):
    """`adapt --window-s 4` on a decoder trained on 5-s windows runs, and says so in one line that names
    the command, not a Python warning with a file path (a subprocess: pytest would capture the warning)."""
    from brainfm.models import BrainDecoder, ModelConfig, save_decoder

    path = tmp_path / "decoder.safetensors"
    save_decoder(BrainDecoder(ModelConfig.from_name("tiny"), 2, token_stats=True, window_s=5.0), path)
    out = subprocess.run([sys.executable, "-m", "brainfm.cli", "adapt", "--ckpt", str(path), "--store",
                          str(small_sample[1]), "--subjects", "eegmat32", "--window-s", "4",
                          "--out", str(tmp_path / "adapted.safetensors")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [line for line in out.stderr.splitlines() if "trained on 5-s windows" in line]
    assert lines == ["brainfm adapt: warning: the decoder was trained on 5-s windows; running it on 4-s windows "
                     "(its head and subject statistics were fitted on the training length)"], out.stderr[-2000:]


def test_only_the_empty_folders_a_failed_run_created_are_removed(tmp_path):
    """discard_empty_runs: a new folder with only bookkeeping goes; one that existed before the run (a pinned
    or resumed version), one with metrics, and everything after a training step or off rank 0 stay."""
    def logger(name):
        folder = tmp_path / name
        return SimpleNamespace(log_dir=str(folder)), folder

    (old_logger, old), (new_logger, new), (metrics_logger, metrics) = logger("old"), logger("new"), logger("metrics")
    for folder in (old, new, metrics):
        folder.mkdir()
        (folder / "hparams.yaml").write_text("{}")
    (new / "events.out.tfevents.1.host").write_bytes(b"")
    (metrics / "metrics.csv").write_text("step\n")
    trainer = SimpleNamespace(loggers=[old_logger, new_logger, metrics_logger], global_step=0, is_global_zero=True)
    assert cli.discard_empty_runs(SimpleNamespace(**{**vars(trainer), "global_step": 3}), set()) == []
    assert cli.discard_empty_runs(SimpleNamespace(**{**vars(trainer), "is_global_zero": False}), set()) == []
    assert cli.discard_empty_runs(trainer, {old}) == [new]
    assert old.is_dir() and not new.exists() and metrics.is_dir()
