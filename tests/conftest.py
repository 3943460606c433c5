"""Fixtures shared by the command tests."""

from pathlib import Path

import pytest
import torch
from tiny_checkpoint import tiny_quickstart_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real quickstart checkpoint (tiny UNet, two steps), one per test module."""
    return tiny_quickstart_checkpoint(tmp_path_factory.mktemp("run"))


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny CPU models gain nothing from intra-op threads, and the cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
