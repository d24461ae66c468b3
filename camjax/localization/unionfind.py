"""Union-find primitives of the max-tree sweeps (``maxtree.py``) and the IoU test of a box.

The forest lives on maps padded with one pixel on every side: a pixel is an index into the
padded raster, ``parent[i] < 0`` until it joins, and every root keeps its component's inclusive
box. ``hit_level`` scores a box against the GT boxes for every IoU threshold at once.
"""

import numba
import numpy as np

# Twice the polygon area inside one 2x2 window of pixel centres with k foreground corners: one
# or two corners (even diagonal ones) enclose nothing, three enclose a half-square triangle.
_WINDOW_AREA2 = np.array([0, 0, 0, 1, 2], np.int32)

# The kernels work on maps padded with one pixel on every side, so that neighbours are index
# offsets without bounds checks. Neighbour k of the 8 (up-left, up, up-right, left, right,
# down-left, down, down-right) is bit k of the ``present`` masks below; of the 4 (up, left,
# right, down), bit k too.
_DY8 = (-1, -1, -1, 0, 0, 1, 1, 1)
_DX8 = (-1, 0, 1, -1, 1, -1, 0, 1)
# The four 2x2 windows with a pixel as one corner (up-left, up-right, down-left, down-right), as
# the bits of their other three corners.
_WINDOWS = ((0, 1, 3), (1, 2, 4), (3, 5, 6), (4, 6, 7))


def _area2_gains():
    """(256,) int32: how much twice the polygon area of a component grows when a pixel joins
    it, for each mask of its 8 neighbours already in (the change of its four windows)."""
    gains = np.zeros(256, np.int32)
    for present in range(256):
        for window in _WINDOWS:
            c = sum(present >> bit & 1 for bit in window)
            gains[present] += _WINDOW_AREA2[c + 1] - _WINDOW_AREA2[c]
    return gains


AREA2_GAIN = _area2_gains()


def _group_table(dy, dx, conn8):
    """For every mask of present neighbours, one neighbour per group of mutually connected
    ones: present neighbours adjacent to each other are already in one component, so a pixel
    needs one union-find lookup per group, not per neighbour (at most 4 groups of 8).

    Returns int32 (2**K, 5): the count, then up to 4 neighbour indices."""
    k = len(dy)
    table = np.full((1 << k, 5), -1, np.int32)
    for mask in range(1 << k):
        members = [i for i in range(k) if mask >> i & 1]
        group = {i: i for i in members}

        def root(i, group=group):
            while group[i] != i:
                i = group[i]
            return i

        for a in members:
            for b in members:
                near = max(abs(dy[a] - dy[b]), abs(dx[a] - dx[b])) == 1
                if not conn8:
                    near = abs(dy[a] - dy[b]) + abs(dx[a] - dx[b]) == 1
                if near:
                    group[root(a)] = root(b)
        reps = sorted({root(i) for i in members})
        table[mask, 0] = len(reps)
        table[mask, 1 : 1 + len(reps)] = reps
    return table


GROUPS_8 = _group_table(_DY8, _DX8, conn8=True)
GROUPS_4 = _group_table((-1, 0, 0, 1), (0, -1, 1, 0), conn8=False)

jit = numba.njit(cache=True, nogil=True, error_model="numpy")


@jit
def find(parent, i):
    while parent[i] != i:
        parent[i] = parent[parent[i]]  # Path halving.
        i = parent[i]
    return i


@jit
def link(parent, box, r, rn):
    """Joins the components of roots r and rn under the smaller index; returns (new root,
    absorbed root)."""
    if rn < r:
        r, rn = rn, r
    parent[rn] = r
    box[r, 0] = min(box[r, 0], box[rn, 0])
    box[r, 1] = min(box[r, 1], box[rn, 1])
    box[r, 2] = max(box[r, 2], box[rn, 2])
    box[r, 3] = max(box[r, 3], box[rn, 3])
    return r, rn


@jit
def grow(box, r, x, y):
    """Extends root r's box to pixel (x, y); whether it changed."""
    if box[r, 0] <= x <= box[r, 2] and box[r, 1] <= y <= box[r, 3]:
        return False
    box[r, 0] = min(box[r, 0], x)
    box[r, 1] = min(box[r, 1], y)
    box[r, 2] = max(box[r, 2], x)
    box[r, 3] = max(box[r, 3], y)
    return True


@jit
def hit_level(x0, y0, x1, y1, gt, num_gt, deltas):
    """How many of the ascending IoU percentages ``deltas`` box (x0, y0, x1, y1) reaches with
    its best GT box. Inclusive coordinates, decisions ``100 * inter >= d * union`` in float64
    (exact for integer boxes, as the reference's float64); a non-positive union reaches only
    non-positive deltas."""
    best = 0
    area = np.int64(x1 - x0 + 1) * (y1 - y0 + 1)
    for g in range(num_gt):
        gx0, gy0, gx1, gy1 = gt[g, 0], gt[g, 1], gt[g, 2], gt[g, 3]
        iw = max(0, min(x1, gx1) - max(x0, gx0) + 1)
        ih = max(0, min(y1, gy1) - max(y0, gy0) + 1)
        inter = iw * ih  # float64 (gt is): exact, the products lie far below 2**53
        union = area + (gx1 - gx0 + 1) * (gy1 - gy0 + 1) - inter
        k = 0
        while k < deltas.shape[0]:
            ok = 100 * inter >= deltas[k] * union if union > 0 else deltas[k] <= 0
            if not ok:
                break
            k += 1
        best = max(best, k)
    return best


@jit
def contour_hit_level(box, r, grow, tight, h, w, gt, num_gt, deltas):
    """`hit_level` of root r's box: tight (the component's own pixels), or the evaluator's
    contour box, the component's box grown by `grow` pixels on every side with
    ``boundingRect``'s end (+1) clipped to the last pixel."""
    if tight:
        return hit_level(box[r, 0], box[r, 1], box[r, 2], box[r, 3], gt, num_gt, deltas)
    return hit_level(
        box[r, 0] - grow,
        box[r, 1] - grow,
        min(box[r, 2] + 1 + grow, w - 1),
        min(box[r, 3] + 1 + grow, h - 1),
        gt,
        num_gt,
        deltas,
    )
