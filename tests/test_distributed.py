"""Multi-node training for real: 2 nodes x 1 process on loopback (torchrun, gloo, CPU).

Two ``torchrun --nnodes 2 --node-rank {0,1}`` launches run a tiny real pretraining
(``configs/distributed/ddp.yaml`` with the ``tiny`` model) on the small sample store. Each
rank logs the windows it trains on (``PretrainDataModule(window_log=...)``). Over one epoch
the union over ranks is every training window once; a run stopped at a mid-epoch step with a
checkpoint, then resumed from it on both nodes, trains on exactly the windows it had not
seen, in the planned order. The in-process tests check the same plan with DataLoader
workers, a remainder that does not fill a batch on every rank, and later epochs.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from brainfm.cli import main
from brainfm.data import FixedWindows, ShardStore, ShuffledWindows, collate_windows
from brainfm.data.datamodule import PretrainDataModule, ResumableLoader
from brainfm.data.sampling import EpochWindows

ROOT = Path(__file__).parent.parent
CONFIG = ROOT / "configs/distributed/ddp.yaml"
TRAIN, VAL = "eegmat00", "eegmat28"
#: 4-s windows of eegmat00 (182 s rest + 62 s arithmetic): 45 + 15 = 60 = 2 ranks x 10 batches x 3.
DATA = dict(window_s=4.0, stride_s=4.0, batch_size=3, num_workers=0, val_subjects=[VAL], seed=0)
STOP_AT = 4  # the interrupted run checkpoints at this step of the 10-step epoch


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ids(batches) -> list[tuple[str, int]]:
    return [(r, int(s)) for b in batches for r, s in zip(b["recording"], b["start"].tolist())]


def _all_windows(windows: ShuffledWindows) -> set[tuple[str, int]]:
    """Every window of ``windows`` once, as the map-style :class:`FixedWindows` cuts them."""
    fixed = FixedWindows(windows.store, windows.window / windows.sfreq, windows.stride / windows.sfreq,
                         recordings=windows.recordings)
    return {(fixed.recordings[int(i)], int(s)) for i, s in zip(fixed.rec_index, fixed.starts)}


def _torchrun(store: Path, exclude: list[str], cwd: Path, log: Path, extra: list[str], timeout: float = 400) -> None:
    """Launch node 0 and node 1 (one process each) and wait for both."""
    port = _free_port()
    args = [
        "-m", "brainfm.cli", "fit", "--config", str(CONFIG), "--config", str(cwd / "override.yaml"),
        "--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.num_nodes=2", "--trainer.precision=32-true",
        "--trainer.max_epochs=1", "--trainer.limit_val_batches=0", "--trainer.num_sanity_val_steps=0",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", "--trainer.logger=false",
        "--model.init_args.model=tiny", "--model.init_args.compile=false", "--model.init_args.target_stats_windows=8",
        f"--data.init_args.store={store}", f"--data.init_args.exclude_subjects={json.dumps(exclude)}",
        f"--data.init_args.window_log={log}",
        *[f"--data.init_args.{k}={json.dumps(v)}" for k, v in DATA.items()],
        *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    procs = []
    for node in (0, 1):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
               "--node-rank", str(node), "--master-addr", "127.0.0.1", "--master-port", str(port), *args]
        procs.append(subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=timeout)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    for node, (p, out) in enumerate(zip(procs, outs)):
        assert p.returncode == 0, f"node {node} failed:\n{out[-4000:]}"


def _logged(log: Path, rank: int) -> list[tuple[int, list[tuple[str, int]]]]:
    """Rank ``rank``'s ``(batch, windows)`` from its window log, in training order."""
    lines = [json.loads(line) for line in (log / f"windows.rank{rank}.jsonl").read_text().splitlines()]
    assert all(line["rank"] == rank and line["epoch"] == 0 for line in lines)
    return [(line["batch"], [(r, s) for r, s in line["windows"]]) for line in lines]


def test_two_nodes_see_every_window_once_and_resume_mid_epoch(small_sample, tmp_path):
    _, store = small_sample
    exclude = [s for s in ShardStore(store).subjects() if s not in (TRAIN, VAL)]
    # The plan each rank must follow, computed here without any process group.
    dm = PretrainDataModule(str(store), exclude_subjects=exclude, **DATA)
    dm.setup("fit")
    plans = [EpochWindows(dm.train_set, DATA["batch_size"], rank, 2) for rank in (0, 1)]
    expected = [p.window_ids(0) for p in plans]
    everything = _all_windows(dm.train_set)
    assert len(everything) == 60 and plans[0].dropped(0) == [] and plans[0].batches == 10
    cut = STOP_AT * DATA["batch_size"]
    (tmp_path / "override.yaml").write_text(
        "trainer:\n  callbacks:\n    - class_path: lightning.pytorch.callbacks.ModelCheckpoint\n"
        f"      init_args: {{dirpath: {tmp_path / 'ckpt'}, save_top_k: -1, every_n_train_steps: {STOP_AT}}}\n")

    t0 = time.perf_counter()
    _torchrun(store, exclude, tmp_path, tmp_path / "run1", ["--trainer.max_steps=%d" % STOP_AT])
    first = [_logged(tmp_path / "run1", r) for r in (0, 1)]
    ckpt = tmp_path / "ckpt" / f"epoch=0-step={STOP_AT}.ckpt"
    assert ckpt.exists(), sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    _torchrun(store, exclude, tmp_path, tmp_path / "run2", [f"--ckpt_path={ckpt}"])
    second = [_logged(tmp_path / "run2", r) for r in (0, 1)]
    times = [json.loads(line)["time"] for line in (tmp_path / "run2/windows.rank0.jsonl").read_text().splitlines()]
    print(f"2 nodes x 1 process, {STOP_AT} + {10 - STOP_AT} steps in two launches: {time.perf_counter() - t0:.1f} s; "
          f"resumed run {(len(times) - 1) / (times[-1] - times[0]):.2f} steps/s")

    seen = []
    for rank in (0, 1):
        assert [b for b, _ in first[rank]] == list(range(STOP_AT))
        assert [b for b, _ in second[rank]] == list(range(STOP_AT, 10))  # resumed at the checkpoint's batch
        before = [w for _, ws in first[rank] for w in ws]
        after = [w for _, ws in second[rank] for w in ws]
        assert before == expected[rank][:cut] and after == expected[rank][cut:]
        seen += before + after
    assert len(seen) == len(set(seen)) == len(everything) and set(seen) == everything


@pytest.mark.parametrize("num_workers", [0, 2])
def test_epoch_plan_once_per_epoch_and_resumable(small_sample, num_workers):
    """In process: the plan's union over 3 ranks, with a remainder left out, is every window
    once; the DataLoader yields the plan; a restored loader continues it (also next epoch)."""
    _, url = small_sample
    store = ShardStore(url)
    windows = ShuffledWindows(store, 4.0, 2.0, recordings=store.select([TRAIN]), block_s=30.0, buffer_size=16, seed=3)
    everything = _all_windows(windows)
    plans = [EpochWindows(windows, 7, rank, 3) for rank in range(3)]
    assert plans[0].batches == 5  # 120 windows: 3 ranks x 5 batches x 7, and 15 left out
    for epoch in (0, 1):
        seen = [w for p in plans for w in p.window_ids(epoch, num_workers)]
        dropped = plans[0].dropped(epoch)
        assert 0 < len(dropped) < 3 * 7 and len(seen) == len(set(seen)) == 3 * len(plans[0])
        assert set(seen) | set(dropped) == everything and not set(seen) & set(dropped)
    assert plans[1].window_ids(0) != plans[1].window_ids(1)  # a new order each epoch

    def loader():
        return ResumableLoader(EpochWindows(windows, 7, 1, 3), batch_size=7, num_workers=num_workers,
                               collate_fn=collate_windows, persistent_workers=num_workers > 0, drop_last=True)

    full = loader()
    assert _ids(full) == plans[1].window_ids(0, num_workers)
    assert _ids(full) == plans[1].window_ids(1, num_workers)
    resumed = loader()
    resumed.load_state_dict({"epoch": 1, "batches": 2})
    assert _ids(resumed) == plans[1].window_ids(1, num_workers)[2 * 7:]
    assert resumed.state_dict() == {"epoch": 1, "batches": plans[1].batches}
    assert _ids(resumed) == plans[1].window_ids(2, num_workers)
    at_end = loader()  # a checkpoint after an epoch's last batch resumes at the next epoch's start
    at_end.load_state_dict({"epoch": 1, "batches": plans[1].batches})
    assert _ids(at_end) == plans[1].window_ids(2, num_workers)


def test_epoch_windows_clear_errors(small_sample):
    _, url = small_sample
    windows = ShuffledWindows(url, 4.0, recordings=ShardStore(url).select([TRAIN]))
    with pytest.raises(ValueError, match="cannot fill one batch"):
        EpochWindows(windows, 1000, 0, 2)
    with pytest.raises(ValueError, match="cannot resume at batch"):
        EpochWindows(windows, 3).resume(0, 10_000)


def test_fsdp_config_parses(capsys, monkeypatch):
    """FSDP needs CUDA in Lightning, so ``fsdp-base.yaml`` only parses here: the strategy, its
    wrap policy over the criss-cross blocks and the ``base`` model resolve."""
    monkeypatch.setattr(sys, "argv", ["brainfm"])
    with pytest.raises(SystemExit) as done:
        main(["fit", "--config", str(ROOT / "configs/distributed/fsdp-base.yaml"), "--print_config"])
    assert done.value.code in (0, None)
    printed = capsys.readouterr().out
    for key in ("FSDPStrategy", "ModuleWrapPolicy", "CrissCrossBlock", "model: base", "num_nodes: 2"):
        assert key in printed
