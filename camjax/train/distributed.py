"""Multi-host start-up: `jax.distributed.initialize` when the environment asks for it.

Set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID, or CAMJAX_DISTRIBUTED=1 on
clusters jax auto-detects (Cloud TPU pods, SLURM). A single host needs nothing: jax.distributed
must not be initialised there. On CPU devices the cross-process collectives are jax's default
(gloo), which is what a 2-process run on one machine uses (README, "Multi-GPU hosts and TPU
pods").
"""

import os

import jax


def initialize() -> bool:
    """Initialises jax.distributed if the environment names a multi-host job; True if it did."""
    explicit = os.environ.get("JAX_COORDINATOR_ADDRESS")
    requested = os.environ.get("CAMJAX_DISTRIBUTED", "") not in ("", "0")
    if not (explicit or requested):
        return False
    # jax reads JAX_COORDINATOR_ADDRESS itself but not the process count and id: without
    # passing them, it falls back to cluster auto-detection, which fails off a managed cluster.
    count, index = os.environ.get("JAX_NUM_PROCESSES"), os.environ.get("JAX_PROCESS_ID")
    jax.distributed.initialize(
        num_processes=int(count) if count else None,
        process_id=int(index) if index else None,
    )
    return True
