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
