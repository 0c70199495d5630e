"""Every YAML config runs through ``brainfm fit`` (LightningCLI) on real data, and DDP scales it out."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from brainfm.cli import main

CONFIGS = sorted((Path(__file__).parent.parent / "configs").rglob("*.yaml"))


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_config_header(config):
    """Each config opens with its purpose, the data it needs and the exact command."""
    head = config.read_text().split("\n\n")[0]
    for key in ("# Purpose:", "# Data:", "# Command: brainfm "):
        assert key in head, f"{config.name} lacks {key!r}"
    assert str(config.relative_to(config.parents[2])) in head


PRETRAIN_CONFIGS = [c for c in CONFIGS if c.parent.name == "pretrain"]  # finetune: tests/test_decode.py
#: Overlays on a CPU recipe (composed, not run alone).
OVERLAYS = [c for c in CONFIGS if c.parent.name == "overlays"]
#: Overlays on ``small-10s-aligned.yaml``: the two halves of the leave-one-subject-out protocol.
LOSO_HALVES = [c for c in CONFIGS if c.parent.name == "loso"]


@pytest.mark.parametrize("config", PRETRAIN_CONFIGS, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_config_fast_dev_run(config, small_sample, tmp_path, monkeypatch):
    _, store = small_sample
    monkeypatch.setattr(sys, "argv", ["brainfm"])  # LightningCLI reads args, not pytest's argv
    main([
        "fit", "--config", str(config),
        "--trainer.fast_dev_run=1", "--trainer.accelerator=cpu", "--trainer.precision=32-true",
        f"--trainer.default_root_dir={tmp_path}",
        f"--data.init_args.store={store}", "--data.init_args.batch_size=4", "--data.init_args.num_workers=0",
        "--data.init_args.val_subjects=[eegmat28]",
        "--model.init_args.compile=false", "--model.init_args.target_stats_windows=32",
    ])


def test_loso_halves_never_read_each_others_subjects(capsys, monkeypatch):
    """Each half, composed over its base recipe, reads only its own EEGMAT subjects (train and
    validation), and the two halves together read all 36: every LOSO fold has an encoder that
    never read its test subject (``benchmarks/bench_loso.py``)."""
    monkeypatch.setattr(sys, "argv", ["brainfm"])
    base = LOSO_HALVES[0].parents[1] / "small-10s-aligned.yaml"
    eegmat = {f"eegmat{i:02d}" for i in range(36)}
    read = []
    for half in LOSO_HALVES:
        with pytest.raises(SystemExit) as done:
            main(["fit", "--config", str(base), "--config", str(half), "--print_config"])
        assert done.value.code in (0, None)
        config = yaml.safe_load(capsys.readouterr().out)
        data, model = config["data"]["init_args"], config["model"]["init_args"]
        assert config["trainer"]["max_steps"] == model["max_steps"] == 2000 and model["targets"]  # the rest: the base's
        assert data["normalize"] == "align" and half.stem in config["trainer"]["default_root_dir"]
        read.append(eegmat - set(data["exclude_subjects"]))
        assert set(data["val_subjects"]) < read[-1]
    assert len(read) == 2 and not read[0] & read[1] and read[0] | read[1] == eegmat


def test_gpu_overlay_composes_over_the_cpu_recipes(capsys, monkeypatch):
    """The GPU recipe is an overlay: over either CPU recipe it keeps the recipe's model and data and
    changes device, precision, compile, batch, workers and steps (trainer and schedule alike)."""
    monkeypatch.setattr(sys, "argv", ["brainfm"])
    (gpu,) = [c for c in OVERLAYS if c.stem == "gpu"]
    for recipe in ("small-10s", "small-10s-aligned"):
        with pytest.raises(SystemExit) as done:
            main(["fit", "--config", str(gpu.parents[1] / f"{recipe}.yaml"), "--config", str(gpu), "--print_config"])
        assert done.value.code in (0, None)
        config = yaml.safe_load(capsys.readouterr().out)
        trainer, model, data = config["trainer"], config["model"]["init_args"], config["data"]["init_args"]
        assert trainer["accelerator"] == "gpu" and trainer["precision"] == "bf16-mixed" and model["compile"]
        assert trainer["max_steps"] == model["max_steps"] == 100000 and model["model"] == "small"
        assert data["batch_size"] == 256 and data["num_workers"] == 4 and data["window_s"] == 10.0
        assert model["targets"]["features"] == ["relpow", "logpow", "hjorth", "plv", "pac", "indices"]
        assert trainer["default_root_dir"] == "runs/pretrain-gpu" and data["val_subjects"] is None


def test_ddp_two_processes_on_cpu(small_sample, tmp_path):
    """The quickstart config under a 2-process DDP strategy (gloo) for a few steps."""
    _, store = small_sample
    config = Path(__file__).parent.parent / "configs/pretrain/quickstart.yaml"
    cmd = [
        sys.executable, "-m", "brainfm.cli", "fit", "--config", str(config),
        "--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.max_steps=4",
        "--trainer.val_check_interval=4", "--trainer.limit_val_batches=2", "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={tmp_path}", f"--data.init_args.store={store}",
        "--data.init_args.batch_size=8",
    ]
    out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "max_steps=4" in out.stderr + out.stdout
    metrics = list(tmp_path.rglob("metrics.csv"))
    assert metrics and (tmp_path / "runs/quickstart/csv/version_0/encoder.safetensors").exists()


def test_resume_validate_test_predict(small_sample, tmp_path, monkeypatch):
    """fit writes a checkpoint; fit resumes from it; validate/test/predict load it."""
    _, store = small_sample
    monkeypatch.setattr(sys, "argv", ["brainfm"])
    monkeypatch.chdir(tmp_path)
    config = str(Path(__file__).parent.parent / "configs/pretrain/quickstart.yaml")
    common = [
        "--config", config, "--trainer.enable_progress_bar=false", f"--data.init_args.store={store}",
        "--data.init_args.batch_size=8", "--trainer.limit_val_batches=2", "--trainer.limit_test_batches=2",
        "--trainer.limit_predict_batches=2",
    ]
    main(["fit", *common, "--trainer.max_steps=3", "--trainer.val_check_interval=3"])
    ckpt = tmp_path / "runs/quickstart/csv/version_0/checkpoints/last.ckpt"
    assert ckpt.exists()
    with pytest.warns(UserWarning, match="dirpath has changed"):  # new logger version, same run
        main(["fit", *common, "--trainer.max_steps=6", "--trainer.val_check_interval=3", f"--ckpt_path={ckpt}"])
    import torch

    assert torch.load(tmp_path / "runs/quickstart/csv/version_1/checkpoints/last.ckpt", weights_only=True)["global_step"] == 6
    for command in ("validate", "test", "predict"):
        with pytest.warns(UserWarning, match="dirpath has changed"):
            main([command, *common, f"--ckpt_path={ckpt}"])
