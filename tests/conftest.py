"""Test session set-up: 8 forced CPU devices, so sharding runs for real without accelerators.

The flag must be set before jax initialises its backends, hence at import time of conftest.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
