"""The README's two commands are the ones CI and users run, and the main job works as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).parent.parent


def _commands() -> list[str]:
    quickstart = (ROOT / "README.md").read_text().split("## Quickstart")[1].split("\n## ")[0]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", quickstart, re.S)]


#: What the README's commands run inside the locked environment.
IN_ENV = "python -m uv run --locked "


def test_readme_has_install_and_main_job_then_test_commands():
    install_and_main_job, tests = _commands()
    install, main_job = install_and_main_job.split(" && ")
    assert install == 'python -m pip install "uv==0.13.9"'
    assert main_job == IN_ENV + "brainfm fit --config configs/pretrain/quickstart.yaml"
    assert tests == IN_ENV + "pytest"
    ci = (ROOT / ".ci/run").read_text().splitlines()
    assert install.replace("pip install", "pip install -q") in ci
    assert ci.index("rm -rf .venv") < ci.index(tests) == len(ci) - 1, "CI runs the README's tests in a fresh env"


def test_readme_main_job(tmp_path):
    """Runs the main job exactly as written, from a folder holding the repo's configs:
    it builds the full sample store on first use, pretrains ``tiny`` and beats the
    copy-the-mean baseline on held-out subjects."""
    main_job = _commands()[0].split(" && ")[1].removeprefix(IN_ENV)  # already inside the environment
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    # the environment's scripts first, as `uv run` or an activated .venv would have them
    path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
    env = {**os.environ, "BRAINFM_HOME": os.environ["BRAINFM_HOME"], "PATH": path}
    out = subprocess.run(main_job, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    run = tmp_path / "runs/quickstart/csv/version_0"
    metrics = pd.read_csv(run / "metrics.csv")
    val = metrics[["step", "val/loss", "val/loss_mean_baseline"]].dropna()
    final = val.iloc[-1]
    assert final["val/loss"] < 0.95 * final["val/loss_mean_baseline"], val
    assert (run / "encoder.safetensors").exists() and (run / "checkpoints/last.ckpt").exists()
    assert metrics["train/samples_per_s"].dropna().median() > 0
    assert list((tmp_path / "runs/quickstart/tensorboard").rglob("events.out.tfevents.*"))
