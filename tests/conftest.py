import os

import pytest
import torch

# Tests never touch the network; the Hub client must read only its local cache.
os.environ.setdefault('HF_HUB_OFFLINE', '1')

FIXTURES = os.path.join(os.path.dirname(__file__), 'fixtures')


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(12345)
    yield


@pytest.fixture
def fixtures_dir():
    return FIXTURES
