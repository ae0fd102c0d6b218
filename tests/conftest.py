"""Fixtures shared by several test modules."""
import pytest
import torch


def _one_torch_thread():
    """One torch thread while a test (or a module's fixtures) runs: on a shared 2-core machine
    more threads make tiny models slower."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


one_torch_thread_per_module = pytest.fixture(scope="module", name="one_torch_thread_per_module")(
    _one_torch_thread)


@pytest.fixture
def seeded_one_thread():
    """torch seeded with 0, and one torch thread, for one test."""
    torch.manual_seed(0)
    yield from _one_torch_thread()
