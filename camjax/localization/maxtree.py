"""All 256 threshold levels of the WSOL box rules in one pass per map: compiled union-find sweeps.

The evaluator thresholds a uint8 map at every level L (foreground ``q > L``) and boxes the
contours of each mask. The masks are nested: the foreground at level L is the one at L + 1
plus the pixels of value L + 1, and the background at L + 1 is the one at L plus the pixels of
value L + 1. So one sweep over the pixels in value order with a union-find that keeps each
component's bounding box (a max-tree) sees the components of every level, at O(H * W) cost
for all 256 levels instead of 256 contour tracings. Per map and level we keep a *hit level*:
the number of IoU thresholds (sorted ascending) that the best box reaches against any GT box,
which answers "is there a box with IoU >= delta" for every delta at once.

Sweeps of one union-find pattern (primitives in ``unionfind.py``):

* outer contours (MaxBoxAccV2): 8-connected foreground components, levels from the top down
  (``_outer_sweep``);
* hole contours (MaxBoxAccV2): 4-connected background components that do not reach the image
  frame, levels from the bottom up, over the few pixels that ever lie in a hole (those below
  the filled map ``f`` defined next; ``_hole_sweep``);
* the largest contour (MaxBoxAcc, "V1"): ``cv2.contourArea`` ranks outer contours by the area
  of the polygon through their border pixels' centres, which is the area of the component with
  its holes filled. Filling holes at every level at once is the grey-level hole filling
  ``f = max(q, lowest level at which a 4-connected path of background leads to the frame)``,
  computed by a priority flood from the frame; the filled foreground at level L is ``f > L``.
  The polygon area of a filled component is a sum over the 2x2 windows of pixel centres it
  touches (1/2 per window with three foreground corners, 1 per full window), which a sweep
  over ``f`` keeps per component as pixels arrive. The winner is the largest area, ties going
  to the component whose first pixel comes last in raster order (``wsol.py`` explains why).
* the CAM paper's box (``LARGEST_REGION``): the same sweep over ``q`` itself, ranking the
  8-connected components by pixel count (ties to the first in raster order), tight boxes.

The kernels are numba-compiled and run the maps of a batch in parallel over the CPU cores.
``wsol.level_hits`` calls them; they are exact against OpenCV (``tests/localization``).
"""

import numba
import numpy as np

from camjax.localization.unionfind import (
    AREA2_GAIN,
    GROUPS_4,
    GROUPS_8,
    contour_hit_level,
    find,
    grow,
    hit_level,
    jit,
    link,
)
from camjax.localization.wsol import NUM_LEVELS

# What a sweep reports per level (``rule``): the best box of every contour (MaxBoxAccV2), the
# largest contour's box by polygon area (MaxBoxAcc), or the CAM paper's box, the largest
# 8-connected region by pixel count, tight (no boundingRect end), no box on an empty mask.
ALL_CONTOURS, LARGEST_CONTOUR, LARGEST_REGION = 0, 1, 2


@jit
def _counting_order(values, h, w):
    """Pixels sorted by value (stable in raster order): padded indices, y and x (int32 (N,)
    each), and the start of each value's run, int64 (257,). values: (H * W,) in 0..255."""
    wp = w + 2
    start = np.zeros(NUM_LEVELS + 1, np.int64)
    for i in range(h * w):
        start[values[i] + 1] += 1
    for v in range(NUM_LEVELS):
        start[v + 1] += start[v]
    fill = start[:NUM_LEVELS].copy()
    index = np.empty(h * w, np.int32)
    ys = np.empty(h * w, np.int32)
    xs = np.empty(h * w, np.int32)
    for y in range(h):
        for x in range(w):
            v = values[y * w + x]
            j = fill[v]
            fill[v] += 1
            index[j] = (y + 1) * wp + x + 1
            ys[j] = y
            xs[j] = x
    return index, ys, xs, start


@jit
def _padded(values, h, w, pad):
    """(H * W,) values -> ((H + 2) * (W + 2),) int32 with a one-pixel frame of ``pad``."""
    wp = w + 2
    out = np.full((h + 2) * wp, pad, np.int32)
    for y in range(h):
        for x in range(w):
            out[(y + 1) * wp + x + 1] = values[y * w + x]
    return out


@jit
def _fill_holes(q, h, w):
    """Grey-level hole filling, (H * W,) int32: for each pixel, the lowest level L such that a
    4-connected path of pixels <= L joins it to the outside of the image (at least its value).

    A priority flood from the frame with a bucket queue (values are 0..255): pixels leave the
    queue in non-decreasing level, each entering with max(level it was reached from, value)."""
    hp, wp = h + 2, w + 2
    values = _padded(q, h, w, 0)
    level_of = np.zeros(hp * wp, np.int32)
    seen = np.zeros(hp * wp, np.bool_)
    head = np.full(NUM_LEVELS, -1, np.int32)
    nxt = np.empty(hp * wp, np.int32)
    for y in range(hp):
        for x in range(wp):
            if y == 0 or x == 0 or y == hp - 1 or x == wp - 1:
                p = y * wp + x
                seen[p] = True
                nxt[p] = head[0]
                head[0] = p
    offsets = (-wp, -1, 1, wp)
    level = 0
    while level < NUM_LEVELS:
        p = head[level]
        if p < 0:
            level += 1
            continue
        head[level] = nxt[p]
        for off in offsets:
            nb = p + off
            if nb < 0 or nb >= hp * wp or seen[nb]:
                continue
            seen[nb] = True
            f = max(level, values[nb])
            level_of[nb] = f
            nxt[nb] = head[f]
            head[f] = nb
    filled = np.empty(h * w, np.int32)
    for y in range(h):
        for x in range(w):
            filled[y * w + x] = level_of[(y + 1) * wp + x + 1]
    return filled


# The sweeps keep their per-pixel steps in one loop body, past the usual function length: as a
# shared helper the union step ran 2.2-3.8x slower, inlined or not (numba reference-counts its 8
# array arguments per pixel; benchmarks/RESULTS.md, ninth session's audits; issue 11).
@jit
def _outer_sweep(order, h, w, rule, gt, num_gt, deltas, boxes_out):
    """Adds pixels from value 255 down and reports, after each level, the boxes of the
    8-connected components of the foreground ``values > L``.

    Args:
      order: the swept values' ``_counting_order`` (the filled map for LARGEST_CONTOUR).
      rule: ALL_CONTOURS (the best box of all components), LARGEST_CONTOUR (the V1 winner:
        largest polygon area, ties to the last first pixel) or LARGEST_REGION (most pixels,
        ties to the first first pixel; tight boxes).
      boxes_out: (256, 4) int32 that receives the winner's inclusive box per level (-1 rows
        where there is none), or (0, 4) to skip.

    Returns:
      (256,) int32: for level L, the hit level of the best box over all components (-1 when
      there is none), or of the winner. A component's box is ``(x0, y0, x1 + 1, y1 + 1)``
      clipped to the last pixel, as the evaluator's ``boundingRect`` ends, or tight.
    """
    index, ys, xs, start = order
    wp = w + 2
    nodes = (h + 2) * wp
    largest = rule != ALL_CONTOURS
    tight = rule == LARGEST_REGION
    # parent[i] >= 0 once pixel i is added: pixels arrive by value, and within a value in
    # raster order, which is exactly "already in the foreground". The frame never is.
    parent = np.full(nodes, -1, np.int32)
    box = np.empty((nodes, 4), np.int32)  # x0, y0, x1, y1 of each root's component
    hits = np.zeros(nodes, np.int8)  # hit level of each root's box
    count = np.zeros(deltas.shape[0] + 1, np.int32)  # roots per hit level
    result = np.full(NUM_LEVELS, -1, np.int32)
    size = nodes if largest else 1
    area2 = np.zeros(size, np.int32)  # twice the polygon area, or the pixel count
    first = np.zeros(size, np.int32)  # raster index of the component's first pixel
    # Ties between equal sizes: the larger key wins, so the last first pixel for the contour
    # rule (OpenCV's order) and the first one for the region rule (raster order).
    sign = -1 if tight else 1
    offsets = (-wp - 1, -wp, -wp + 1, -1, 1, wp - 1, wp, wp + 1)
    best, best_area, best_key, dirty = -1, -1, -(2**31), False

    for step in range(NUM_LEVELS):
        v = NUM_LEVELS - 1 - step
        for j in range(start[v], start[v + 1]):
            p, y, x = index[j], ys[j], xs[j]
            present = 0
            for k in range(8):
                present |= (parent[p + offsets[k]] >= 0) << k
            r = -1
            changed = False
            best_touched = False
            for g in range(GROUPS_8[present, 0]):
                rn = find(parent, p + offsets[GROUPS_8[present, 1 + g]])
                if rn == r:
                    continue
                count[hits[rn]] -= 1
                best_touched = best_touched or rn == best
                if r < 0:
                    r = rn
                    continue
                r, rn = link(parent, box, r, rn)
                if largest:
                    area2[r] += area2[rn]
                    first[r] = min(first[r], first[rn])
                changed = True
            if r < 0:
                r = p
                box[p, 0], box[p, 1], box[p, 2], box[p, 3] = x, y, x, y
                if largest:
                    first[p] = y * w + x
                changed = True
            elif grow(box, r, x, y):
                changed = True
            parent[p] = r
            if changed:
                hits[r] = contour_hit_level(box, r, 0, tight, h, w, gt, num_gt, deltas)
            count[hits[r]] += 1
            if not largest:
                continue
            area2[r] += 1 if tight else AREA2_GAIN[present]
            first[r] = min(first[r], y * w + x)
            if dirty:
                continue
            key = sign * first[r]
            if best_touched:
                # The best merged or grew: it stays best unless its key fell (its first pixel
                # moved up without area gain), then rescan at the end of the level.
                if area2[r] > best_area or (area2[r] == best_area and key >= best_key):
                    best, best_area, best_key = r, area2[r], key
                else:
                    dirty = True
            elif area2[r] > best_area or (area2[r] == best_area and key > best_key):
                best, best_area, best_key = r, area2[r], key
        level = v - 1  # the mask "> v - 1" is complete
        if level < 0:
            continue
        if largest:
            if dirty:
                best, best_area, best_key = -1, -1, -(2**31)
                for j in range(start[v], start[NUM_LEVELS]):
                    i = index[j]
                    key = sign * first[i]
                    if parent[i] == i and (
                        area2[i] > best_area or (area2[i] == best_area and key > best_key)
                    ):
                        best, best_area, best_key = i, area2[i], key
                dirty = False
            if best >= 0:
                result[level] = hits[best]
                if boxes_out.shape[0]:
                    boxes_out[level] = box[best]
        else:
            result[level] = _best_hit_level(count)
    return result


@jit
def _best_hit_level(count):
    for k in range(count.shape[0] - 1, -1, -1):
        if count[k] > 0:
            return k
    return -1


@jit
def _hole_sweep(filled, order, h, w, gt, num_gt, deltas):
    """Adds background pixels from value 0 up and reports, after each level L, the boxes of
    the holes of the foreground ``values > L``: the 4-connected components of the background
    ``values <= L`` that do not reach the image frame.

    A pixel p lies in a hole exactly at the levels ``values[p] <= L < filled[p]`` (the filled
    map of ``_fill_holes``), and all pixels of one hole share ``filled``, the level E at which
    the hole opens to the outside (its pixels reach the frame from E on, together). So only
    pixels with ``filled > values`` take part (few, in CAMs), and a hole's box leaves the
    count at level E, when its component stops being a hole. Two holes never merge with
    different E: once joined they open together.

    Returns (256,) int32: for level L, the hit level of the best hole box (-1 when there is
    none). A hole's box is its bounding box grown by one pixel on every side, clipped (the
    hole's contour runs through the foreground pixels around it).
    """
    index, ys, xs, start = order
    wp = w + 2
    nodes = (h + 2) * wp
    parent = np.full(nodes, -1, np.int32)
    box = np.empty((nodes, 4), np.int32)
    hits = np.zeros(nodes, np.int8)
    count = np.zeros(deltas.shape[0] + 1, np.int32)
    result = np.full(NUM_LEVELS, -1, np.int32)
    # Roots by the level at which their hole opens: a linked list per level.
    opens_head = np.full(NUM_LEVELS + 1, -1, np.int32)
    opens_next = np.empty(nodes, np.int32)
    offsets = (-wp, -1, 1, wp)

    for v in range(NUM_LEVELS):
        i = opens_head[v]
        while i >= 0:
            if parent[i] == i:
                count[hits[i]] -= 1
            i = opens_next[i]
        for j in range(start[v], start[v + 1]):
            y, x = ys[j], xs[j]
            opens = filled[y * w + x]
            if opens <= v:
                continue  # joins the outside at its own level: never in a hole
            p = index[j]
            present = 0
            for k in range(4):
                present |= (parent[p + offsets[k]] >= 0) << k
            r = -1
            changed = False
            for g in range(GROUPS_4[present, 0]):
                rn = find(parent, p + offsets[GROUPS_4[present, 1 + g]])
                if rn == r:
                    continue
                count[hits[rn]] -= 1
                if r < 0:
                    r = rn
                    continue
                r, rn = link(parent, box, r, rn)
                changed = True
            if r < 0:
                r = p
                box[p, 0], box[p, 1], box[p, 2], box[p, 3] = x, y, x, y
                opens_next[p] = opens_head[opens]
                opens_head[opens] = p
                changed = True
            elif grow(box, r, x, y):
                changed = True
            parent[p] = r
            if changed:
                # A hole's contour runs through the foreground pixels around it.
                hits[r] = contour_hit_level(box, r, 1, False, h, w, gt, num_gt, deltas)
            count[hits[r]] += 1
        result[v] = _best_hit_level(count)
    return result


@jit
def _image_hit_levels(q, h, w, gt, num_gt, deltas, rule, out, boxes_out):
    """Writes one map's hit level at every level into out (256,) (see ``hit_levels``)."""
    values = q.astype(np.int32)
    peak = values.max()
    # A level without any foreground: the evaluator scores the box (0, 0, 0, 0), the paper's
    # heuristic has no box.
    empty = 0 if rule == LARGEST_REGION else hit_level(0, 0, 0, 0, gt, num_gt, deltas)
    if rule == LARGEST_REGION:
        per_level = _outer_sweep(
            _counting_order(values, h, w), h, w, rule, gt, num_gt, deltas, boxes_out
        )
    elif rule == LARGEST_CONTOUR:
        filled = _fill_holes(values, h, w)
        per_level = _outer_sweep(
            _counting_order(filled, h, w), h, w, rule, gt, num_gt, deltas, boxes_out
        )
    else:
        filled = _fill_holes(values, h, w)
        order = _counting_order(values, h, w)
        per_level = _outer_sweep(order, h, w, rule, gt, num_gt, deltas, boxes_out)
        holes = _hole_sweep(filled, order, h, w, gt, num_gt, deltas)
        for level in range(NUM_LEVELS):
            per_level[level] = max(per_level[level], holes[level])
    for level in range(NUM_LEVELS):
        out[level] = per_level[level] if level < peak else empty


@numba.njit(cache=True, nogil=True, parallel=True)
def _batch_hit_levels(q, gt, num_gt, deltas, rule, boxes_out):
    b, h, w = q.shape
    out = np.zeros((b, NUM_LEVELS), np.int8)
    for i in numba.prange(b):
        boxes = boxes_out[i] if boxes_out.shape[0] else boxes_out[0:0, 0]
        _image_hit_levels(q[i].reshape(-1), h, w, gt[i], num_gt[i], deltas, rule, out[i], boxes)
    return out


@numba.njit(cache=True, nogil=True, parallel=True)
def _quantize(x, out):
    outside = 0  # values outside [0, 1] or NaN (a sum: prange reduces it across threads)
    for i in numba.prange(x.shape[0]):
        v = np.float64(x[i])
        ok = (v >= 0) & (v <= 1)
        outside += 0 if ok else 1
        out[i] = np.uint8(v * 255) if ok else 0
    return outside


def quantize(scoremaps: np.ndarray) -> tuple[np.ndarray, bool]:
    """``(float64(scoremaps) * 255).astype(np.uint8)`` on the host cores, and whether every
    value lay in [0, 1] (False for NaN; such values quantise to 0)."""
    x = np.ascontiguousarray(scoremaps)
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float64)  # exact for narrower floats (float16)
    out = np.empty(x.shape, np.uint8)
    outside = _quantize(x.reshape(-1), out.reshape(-1))
    return out, outside == 0


def hit_levels(
    quantized: np.ndarray,
    gt_boxes: np.ndarray,
    num_gt: np.ndarray,
    deltas: np.ndarray,
    rule: int,
) -> np.ndarray:
    """Per map and level, how many IoU thresholds the rule's boxes reach.

    Args:
      quantized: (B, H, W) uint8 maps.
      gt_boxes: (B, M, 4) inclusive ``(x0, y0, x1, y1)``, integer or float (compared in float64,
        exact for integers); num_gt: (B,) real boxes per map.
      deltas: (D,) int IoU percentages, ascending.
      rule: ALL_CONTOURS (V2), LARGEST_CONTOUR (V1) or LARGEST_REGION (the paper's heuristic).

    Returns:
      (B, 256) int8: entry [b, L] = k means the mask ``q > L`` has a box reaching
      ``IoU >= deltas[i] / 100`` exactly for i < k (levels at or above the peak use the empty
      box ``(0, 0, 0, 0)``, as the evaluator, except under LARGEST_REGION: no box, 0).
    """
    return _batch_hit_levels(
        np.ascontiguousarray(quantized, np.uint8),
        _gt_array(gt_boxes),
        np.ascontiguousarray(num_gt, np.int64),
        np.ascontiguousarray(deltas, np.int64),
        int(rule),
        np.zeros((0, NUM_LEVELS, 4), np.int32),
    )


def _gt_array(gt_boxes) -> np.ndarray:
    """GT boxes as float64 whatever their type: the IoU decisions of integer boxes (the
    evaluator's) are exact in float64 (products far below 2**53), and one dtype means one
    numba specialisation of every kernel: a fresh install compiled int32 and float64 versions
    for ~34 s of the first evaluation's wall time."""
    return np.ascontiguousarray(gt_boxes, np.float64)


def region_boxes(quantized: np.ndarray) -> np.ndarray:
    """The paper heuristic's box at every level: (B, H, W) uint8 -> (B, 256, 4) int32 inclusive
    ``(x0, y0, x1, y1)`` of the largest 8-connected region of ``q > L`` (most pixels, ties to
    the first in raster order); -1 rows where the mask is empty."""
    q = np.ascontiguousarray(quantized, np.uint8)
    b = q.shape[0]
    boxes = np.full((b, NUM_LEVELS, 4), -1, np.int32)
    _batch_hit_levels(
        q,
        np.zeros((b, 1, 4), np.float64),
        np.zeros((b,), np.int64),
        np.zeros((0,), np.int64),
        LARGEST_REGION,
        boxes,
    )
    return boxes
