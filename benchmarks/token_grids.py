"""How often `Probe.grid_shape` reads a ViT's token layout wrong, or refuses it.

    python benchmarks/token_grids.py [--at COMMIT]

Sweeps the layouts vision transformers make: images of h x w patches of p px (p in 8, 14, 16,
32; 2-24 patches a side), exact (p divides the image) after 0, 1, 2 (DeiT) or 5 (a class token
and 4 registers) leading tokens, and rounded ('VALID': the image p/2 or p/3 px past a whole
grid) after 0, 1, 2 or 5. For each class it prints the layouts read as another grid (silently
wrong maps) and those refused (a ValueError asking for grid=(h, w)). `--at COMMIT` sweeps that
commit's camjax/explain/probe.py instead of the working tree's (read with `git show`), to put
an earlier rule beside the current one.
"""

import argparse
import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]


def probe_class(commit: str | None):
    if commit is None:
        from camjax.explain.probe import Probe

        return Probe
    source = subprocess.run(
        ["git", "show", f"{commit}:camjax/explain/probe.py"],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = Path(tempfile.mkdtemp()) / "probe_at_commit.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("probe_at_commit", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module.Probe


def layouts(kind: str):
    """((H, W), (h, w)) of every layout of `kind` ('exact' or 'rounded') in the sweep."""
    for p in (8, 14, 16, 32):
        for h in range(2, 25):
            for w in range(2, 25):
                if kind == "exact":
                    yield (h * p, w * p), (h, w)
                else:
                    for dh, dw in ((p // 2, 0), (0, p // 2), (p // 3, p // 2)):
                        size = (h * p + dh, w * p + dw)
                        yield size, (size[0] // p, size[1] // p)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--at", default=None, help="A commit whose probe.py to sweep.")
    args = parser.parse_args()
    probe = probe_class(args.at)
    unset = SimpleNamespace(grid=None)  # grid_shape reads only `grid` of the probe
    print(f"probe.py at {args.at or 'the working tree'}")
    for kind in ("exact", "rounded"):
        for prefix in (0, 1, 2, 5):
            wrong = refused = total = 0
            for size, (h, w) in layouts(kind):
                if prefix > h + w:
                    continue
                total += 1
                try:
                    wrong += probe.grid_shape(unset, h * w + prefix, size) != (prefix, h, w)
                except ValueError:
                    refused += 1
            print(f"{kind:8} {prefix} leading tokens: {total:5} layouts, {wrong:5} wrong, "
                  f"{refused:4} refused")  # fmt: skip


if __name__ == "__main__":
    main()
