"""Test configuration: two fake CPU devices so sharded paths run in every test session."""

import jax
import pytest

jax.config.update("jax_num_cpu_devices", 2)


@pytest.fixture(scope="module")
def progress_bar_allowed():
    """NumPyro turns its bar off under CI or xdist; with it on, continuations of a run reuse
    one compiled iteration instead of recompiling the loop (modules opt in with usefixtures)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("CI", raising=False)
        patch.delenv("PYTEST_XDIST_WORKER", raising=False)
        yield


@pytest.fixture(autouse=True, scope="module")
def release_compiled_programs():
    """Drop JAX's compiled programs after each test module.

    Each XLA CPU executable holds memory mappings, and JAX caches them for the life of the
    process. A pytest worker that runs half the suite went past 35 000 mappings, near Linux's
    default limit of 65 530 (``vm.max_map_count``); past it, XLA's compiler segfaults on the
    next program (three CI runs crashed that way, in different tests). Programs a module needs
    again are compiled again.
    """
    yield
    jax.clear_caches()
