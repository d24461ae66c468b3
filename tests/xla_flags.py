"""XLA_FLAGS of the test session and of the processes tests start; importing this module
changes nothing (tests/conftest.py applies `with_test_flags` to the session's own process)."""

import importlib.metadata
import os
import re

DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"
OPT_LEVEL_FLAG = "--xla_backend_optimization_level"
# XLA aborts a process whose CPU collective waits over 40 s (default) for one of its device
# threads. With 8 forced devices on 2 cores beside other pytest workers, the learning guard's
# process had "only 7 of them arrived on time" in two CI runs (fresh clones, 2026-12-04). A
# gdb of the second: 7 pool threads waiting in the all-reduce rendezvous and the 8th idle, for
# 10 minutes: a lost participant in jaxlib 0.10.2, not a slow one. That test now runs on one
# device; the longer timeout keeps slow collectives elsewhere from aborting.
COLLECTIVE_TIMEOUT_FLAG = "--xla_cpu_collective_call_terminate_timeout_seconds"
COLLECTIVE_TIMEOUT_S = 600
# XLA's older CPU code generator for fused element-wise code. Through jaxlib 0.10 it is still
# there behind this flag and compiles the tests' many small programs much faster than the MLIR
# fusion emitters at level 0 (fast lane, 2-core CPU: 2 min 11 s against 3 min 8 s). jaxlib 0.11
# and 0.12 removed the flag and abort on it as unknown, so it is set only where it exists.
LEGACY_EMITTERS_FLAG = "--xla_cpu_use_fusion_emitters=false"
# jaxlib 0.10 runs CPU convolutions and matrix products as YNNPACK fusions, whose programs ran
# the tests' networks slower than XLA's Eigen kernels (fast lane, 2-core CPU, the same hour: 194
# s against 261 s); camjax compiles its top-level explainer programs without them for the same
# reason (camjax/compile_options.py). Set only on jaxlib 0.10, where that was measured.
EIGEN_KERNELS_FLAG = "--xla_cpu_experimental_ynn_fusion_type="


def version_below(major: int, minor: int) -> bool:
    """Whether the installed jaxlib is older than major.minor (read without importing jax)."""
    installed = importlib.metadata.version("jaxlib").split(".")[:2]
    return tuple(int(part) for part in installed) < (major, minor)


def subprocess_xla_flags(devices: int = 8, calibrated: bool = False) -> str:
    """XLA_FLAGS for the train.py processes tests start, with `devices` CPU devices: the
    session's own (`with_test_flags` of the environment's XLA_FLAGS), or, where `calibrated`,
    XLA's default optimisation level with the collective timeout above and, on jaxlib 0.10,
    Eigen's kernels. The learning guard's floor was calibrated with these flags (its run took
    62 s against 83 s without Eigen's kernels, 2-core CPU, one after the other), and at the
    default level the paper-size VGG16's initialisation takes 3 s against 36 s at level 0.

    The tiny runs of test_loop and test_multihost mostly compile, so the session's flags suit
    them: test_multihost took 111 s against 147 s at the default level (2-core CPU, alone).
    Its process 1 compiles every program afresh: jax writes the persistent cache from process
    0 only, and the cache key holds the CPU topology's fingerprint, which differs by process."""
    if calibrated:
        flags = f"{DEVICE_COUNT_FLAG}={devices} {COLLECTIVE_TIMEOUT_FLAG}={COLLECTIVE_TIMEOUT_S}"
        return f"{flags} {EIGEN_KERNELS_FLAG}" if version_below(0, 11) else flags
    return with_test_flags(os.environ.get("XLA_FLAGS", ""), devices)


def with_device_count(xla_flags: str, devices: int = 8) -> str:
    """xla_flags with the forced CPU device count set to `devices`, other flags kept in order."""
    kept = re.sub(rf"{DEVICE_COUNT_FLAG}=\S*", "", xla_flags).split()
    return " ".join([*kept, f"{DEVICE_COUNT_FLAG}={devices}"])


def with_test_flags(xla_flags: str, devices: int = 8) -> str:
    """with_device_count(xla_flags, devices), compiled at LLVM's lowest optimisation level unless
    xla_flags sets one: the tests' programs are small and most compile once, so LLVM's passes
    were most of their compile time and little of their run time (the whole suite at level 0:
    955 s of test time against 1,282 s, 2-core CPU). XLA's own HLO passes (fusion, layout)
    still run, and convolutions and matrix products still call compiled kernels. Also the
    longer collective timeout (COLLECTIVE_TIMEOUT_FLAG), and on jaxlib 0.10 the legacy
    element-wise emitters (LEGACY_EMITTERS_FLAG) and Eigen's kernels (EIGEN_KERNELS_FLAG) at
    level 0."""
    flags = with_device_count(xla_flags, devices)
    if OPT_LEVEL_FLAG not in flags:
        flags = f"{flags} {OPT_LEVEL_FLAG}=0"
        for flag in (LEGACY_EMITTERS_FLAG, EIGEN_KERNELS_FLAG) if version_below(0, 11) else ():
            if flag.partition("=")[0] not in flags:  # the user's own setting stays
                flags = f"{flags} {flag}"
    if COLLECTIVE_TIMEOUT_FLAG not in flags:
        flags = f"{flags} {COLLECTIVE_TIMEOUT_FLAG}={COLLECTIVE_TIMEOUT_S}"
    return flags
