"""Shared fixtures. Tests run offline on the real recordings under the data root.

Network: the guard installed by :func:`pytest_configure` refuses every socket connection except Unix sockets
(DataLoader workers) and loopback (Dask's LocalCluster), for the whole session;
``test_no_network`` checks that the guard is on. pytest-socket's ``--allow-hosts``
does the same for IP sockets but rejects Unix sockets, so the guard is written here.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path

import pytest
import threadpoolctl
import torch

from brainfm.data.root import data_root

# Everything brainfm builds during tests goes to a throwaway home, never ~/.cache.
_HOME = Path(os.environ.setdefault("BRAINFM_HOME", str(Path(__file__).parent.parent / ".pytest-brainfm-home")))

#: A small but complete sample: EEGMAT subjects on each side of the CBraMod split,
#: one EEGMMIDB imagery run, and every MEG/EEG format excerpt.
SMALL_SAMPLE = {"eegmat_subjects": [0, 1, 28, 32], "eegbci_runs": [4]}


class NetworkBlocked(OSError):
    """Raised when a test tries to reach a non-loopback address."""


def _is_local(address) -> bool:
    if isinstance(address, (str, bytes)):  # AF_UNIX path
        return True
    host = address[0]
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_connect = socket.socket.connect
_connect_ex = socket.socket.connect_ex


def _guarded(method):
    def connect(self, address, *args):
        if self.family != getattr(socket, "AF_UNIX", None) and not _is_local(address):
            raise NetworkBlocked(f"tests never touch the network (tried {address!r})")
        return method(self, address, *args)

    connect._brainfm_guard = True
    return connect


#: Under pytest-xdist (``addopts``: two workers, one per core of the CI machine) every worker and every
#: process it starts (CLI runs, notebook kernels, torchrun nodes) computes on one thread: oversubscribed
#: OpenMP threads ran the tiny model 20x slower than one thread on this 2-core machine.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    threadpoolctl.threadpool_limits(1)

#: The longest test files (minutes each, from ``--durations``) are collected first, so that no worker
#: starts one of them while the other is nearly done. ``--dist worksteal`` (``addopts``) gives the first half
#: of this order (all the longest files) to one worker and the second half to the other; a worker left with
#: fewer than 2 tests takes the tail of the other's queue. ``--dist load`` handed a quarter of the suite out
#: up front in consecutive chunks and then fed one worker only: in a profiled
#: run (``resource.getrusage`` per test) one worker got 89 tests worth 1 098 s of the 1 692 s, and the
#: other sat idle for the last 500 s (suite 1 131 s; with worksteal, same load: 926 s, both done within 3 s).
LONGEST_FIRST = ("test_readme.py", "test_notebooks.py", "test_reliability.py", "test_reliability_training.py",
                 "test_convert.py", "test_stream.py", "test_nsp_objective.py", "test_distributed.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order kept otherwise


def pytest_configure(config):
    """Install the network guard for the whole test process."""
    if not getattr(socket.socket.connect, "_brainfm_guard", False):
        socket.socket.connect = _guarded(_connect)
        socket.socket.connect_ex = _guarded(_connect_ex)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = data_root()
    if not (root / "eegmat").is_dir():
        pytest.fail(f"real recordings not found under {root}; set BRAINFM_DATA")
    return root


@pytest.fixture(scope="session")
def small_sample(tmp_path_factory, shared_data) -> tuple[Path, Path]:
    """(BIDS root, store) of the small sample, converted once per session."""
    from brainfm.pipelines.sample import build_sample

    dest = tmp_path_factory.mktemp("sample")
    store, report = build_sample(dest, workers=2, progress=False, **SMALL_SAMPLE)
    assert report.ok, report.failed
    return dest / "bids", store


@pytest.fixture(scope="module")
def one_thread_reference_kernels():
    """Reference kernels on CPU (not the Triton interpreter, which tests/kernels switches on),
    and one intra-op thread: on this 2-core machine, 2 threads under any other load ran the
    tiny model 20x slower than one. Deploy test modules use it for all their tests."""
    threads, interpret = torch.get_num_threads(), os.environ.get("TRITON_INTERPRET")
    torch.set_num_threads(1)
    os.environ["TRITON_INTERPRET"] = "0"
    yield
    torch.set_num_threads(threads)
    if interpret is None:
        os.environ.pop("TRITON_INTERPRET", None)
    else:
        os.environ["TRITON_INTERPRET"] = interpret
