"""Test session set-up: 8 forced CPU devices, so sharding runs for real without accelerators.

The flag must be set before jax initialises its backends, hence at import time of conftest. It
is added to whatever XLA_FLAGS already holds (a user's own flags, even an empty string), and
replaces a device count given there, since tests assert 8 devices.
"""

import os
import re

DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"


def with_eight_devices(xla_flags: str) -> str:
    """xla_flags with the forced CPU device count set to 8, other flags kept in order."""
    kept = re.sub(rf"{DEVICE_COUNT_FLAG}=\S*", "", xla_flags).split()
    return " ".join([*kept, f"{DEVICE_COUNT_FLAG}=8"])


os.environ["XLA_FLAGS"] = with_eight_devices(os.environ.get("XLA_FLAGS", ""))
os.environ.setdefault("JAX_PLATFORMS", "cpu")
