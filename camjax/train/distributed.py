"""Multi-host start-up: `jax.distributed.initialize` when the environment asks for it.

Set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID (read by jax itself), or
CAMJAX_DISTRIBUTED=1 on clusters jax auto-detects (Cloud TPU pods, SLURM). A single host needs
nothing: jax.distributed must not be initialised there.
"""

import os

import jax


def initialize() -> bool:
    """Initialises jax.distributed if the environment names a multi-host job; True if it did."""
    explicit = os.environ.get("JAX_COORDINATOR_ADDRESS")
    requested = os.environ.get("CAMJAX_DISTRIBUTED", "") not in ("", "0")
    if not (explicit or requested):
        return False
    jax.distributed.initialize()
    return True
