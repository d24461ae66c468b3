"""What checkpoint verification costs: save and restore of a full VGG16-GAP train state with and
without the per-array digests.

    python benchmarks/checkpoint_verify.py [--repeats 5] [--width 1.0]

Builds the train state of the paper's VGG16-GAP (width 1.0, 1,000 classes, AdamW: parameters
and two moment trees, ~0.2 GB), then times in one process, alternating the two variants so
drift hits both alike:

* baseline, what camjax did before: orbax save of the state and its model fingerprint; restore
  of the fingerprint, then of the state;
* camjax: `camjax.checkpoint.save` (the digest of every array computed on the device, saved in
  the same atomic step) and `camjax.checkpoint_restore.restore` (restore, recompute, compare, check
  finiteness);
* the digest pass alone, and sha256 of a host copy of the state (the alternative design);
* the one-time compile costs.

Each save is timed until orbax has finished writing (`wait_until_finished`). Prints medians;
paste them, with the date, machine and command, into benchmarks/RESULTS.md.
"""

import argparse
import hashlib
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time

import jax
import orbax.checkpoint as ocp

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from camjax import checkpoint, checkpoint_restore, digests, experiment  # noqa: E402
from camjax.train import optim  # noqa: E402
from camjax.train import state as train_state  # noqa: E402
from configs import default  # noqa: E402


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--width", type=float, default=1.0)
    args = parser.parse_args()

    config = default.get_config()
    config.model.width, config.model.num_classes, config.data.image_size = args.width, 1000, 224
    model = experiment.build_model(config)
    tx = optim.create_optimizer(config.optim, 1000)
    mesh = experiment.make_mesh()
    state, _ = train_state.create_train_state(config, model, tx, mesh)
    abstract = train_state.abstract_train_state(config, model, tx, mesh)
    size = sum(x.nbytes for x in jax.tree.leaves(state))
    print(
        f"VGG16-GAP width {args.width}: train state {size / 2**20:.0f} MiB, "
        f"{len(jax.tree.leaves(state))} arrays; {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, jax {jax.__version__}, orbax {ocp.__version__}"
    )
    t = time.perf_counter()
    digests.tree_digests(state)  # compiles the digest pass
    compile_s = time.perf_counter() - t

    root = tempfile.mkdtemp()
    names = ("save", "save_verified", "restore", "restore_verified", "digest", "sha256")
    times = {k: [] for k in names}
    first_verified_restore = None
    try:
        for r in range(-1, args.repeats):  # round -1 compiles and warms up; not counted
            for variant in ("plain", "verified"):
                workdir = os.path.join(root, f"{variant}{r}")
                manager = checkpoint.create_manager(workdir, 2)

                def save(manager=manager, variant=variant):
                    if variant == "verified":
                        checkpoint.save(manager, 1, state, config)
                    else:
                        meta = ocp.args.JsonSave(checkpoint.model_fingerprint(config))
                        manager.save(
                            1,
                            args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=meta),
                        )
                    manager.wait_until_finished()

                def restore(manager=manager, variant=variant):
                    if variant == "verified":
                        restored = checkpoint_restore.restore(manager, abstract, config)
                    else:  # as before: the fingerprint, then the state
                        manager.restore(1, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
                        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
                        restored = manager.restore(1, args=args)["state"]
                    jax.block_until_ready(restored)

                suffix = "_verified" if variant == "verified" else ""
                save_s, restore_s = timed(save), timed(restore)
                if r < 0 and variant == "verified":
                    first_verified_restore = restore_s  # compiles the digest-and-finite pass
                if r >= 0:
                    times["save" + suffix].append(save_s)
                    times["restore" + suffix].append(restore_s)
                manager.close()
                shutil.rmtree(workdir)
            times["digest"].append(timed(lambda: digests.tree_digests(state)))
            host = jax.device_get(state)  # the alternative: a host copy, then sha256
            times["sha256"].append(
                timed(lambda host=host: [hashlib.sha256(x).digest() for x in jax.tree.leaves(host)])
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)

    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"median of {args.repeats}  | before      | verified | ratio")
    for op in ("save", "restore"):
        print(
            f"{op:<18} | {med[op]:9.3f} s | {med[op + '_verified']:6.3f} s | "
            f"{med[op + '_verified'] / med[op]:.2f}x"
        )
    print(f"digest pass alone  | {med['digest']:.3f} s ({size / 2**20 / med['digest']:.0f} MiB/s)")
    print(f"sha256 of a host copy (the alternative) | {med['sha256']:.3f} s")
    print(
        f"one-time compiles: digest {compile_s:.2f} s; first verified restore "
        f"{first_verified_restore:.2f} s (includes compiling the restore check)"
    )


if __name__ == "__main__":
    main()
