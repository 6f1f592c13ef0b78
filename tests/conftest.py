"""Test configuration: two fake CPU devices so sharded paths run in every test session."""

import jax

jax.config.update("jax_num_cpu_devices", 2)
