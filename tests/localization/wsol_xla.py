"""The WSOL box rules as data-parallel XLA: a second, independent implementation for the tests.

camjax counts boxes with one engine, the host max-tree (``camjax/localization/maxtree.py``).
This module computes the evaluator's counts another way, labelling every probed level on
device with a data-parallel union-find (hook roots onto the neighbourhood minimum, compress by
pointer jumping; ``label_one``), 8-connected for the foreground and 4-connected for the
background. Levels are nested, so the foreground is swept from the top level down and the
background from the bottom up, each level's labelling starting from the previous level's
labels; V1 also labels the background of every level from scratch, to tell outer contours from
hole contours. ``test_wsol.py`` holds both implementations to the same OpenCV reference
(``wsol_reference.py``); the contour rules are described in ``camjax/localization/wsol.py``.
"""

import jax
import jax.numpy as jnp
import numpy as np

from camjax.localization import wsol
from camjax.localization.wsol import NUM_LEVELS

BACKGROUND = -1


def label_one(mask: jax.Array, connectivity: int = 8, init: jax.Array | None = None) -> jax.Array:
    """Labels one (H, W) bool mask: int32 (H, W), BACKGROUND off the mask, else the smallest
    raster index of the pixel's component (8- or 4-connected); see ``label_components``.

    ``init``: optional (H, W) labels of a sub-mask of ``mask`` (e.g. the same map at a higher
    level), -1 elsewhere. Its components lie inside components of ``mask``, so it is a valid
    union-find state to start from and saves most of the passes of a sweep over levels.
    """
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}.")
    h, w = mask.shape
    n = h * w
    fg = jnp.concatenate([mask.reshape(-1), jnp.zeros((1,), bool)])
    own = jnp.arange(n + 1, dtype=jnp.int32)
    if init is not None:
        flat = init.reshape(-1)
        own = jnp.concatenate([jnp.where(flat >= 0, flat, own[:n]), own[n:]])
    # Slot n is a self-looping "nowhere" so gathers and scatters never need masking.
    parent = jnp.where(fg, own, n)

    def neighbour_min(parent):
        grid = jnp.pad(parent[:n].reshape(h, w), 1, constant_values=n)
        if connectivity == 8:
            rows = jnp.minimum(jnp.minimum(grid[:, :-2], grid[:, 1:-1]), grid[:, 2:])
            low = jnp.minimum(jnp.minimum(rows[:-2], rows[1:-1]), rows[2:])
        else:
            low = jnp.minimum(
                jnp.minimum(grid[1:-1, :-2], grid[1:-1, 2:]),
                jnp.minimum(jnp.minimum(grid[:-2, 1:-1], grid[2:, 1:-1]), grid[1:-1, 1:-1]),
            )
        low = jnp.concatenate([low.reshape(-1), jnp.full((1,), n, jnp.int32)])
        return jnp.where(fg, low, n)

    def compress(parent):
        def body(state):
            p, _ = state
            jumped = p.at[p].get(mode="promise_in_bounds")
            return jumped, jnp.any(jumped != p)

        return jax.lax.while_loop(lambda s: s[1], body, (parent, jnp.bool_(True)))[0]

    def body(state):
        parent, _ = state
        low = neighbour_min(parent)
        # Hook every root onto the smallest label next to any of its pixels; pointers only
        # decrease, so no cycles form and the fixed point labels by the component minimum.
        hooked = parent.at[parent].min(low, mode="promise_in_bounds")
        hooked = compress(jnp.minimum(hooked, low))
        return hooked, jnp.any(hooked != parent)

    parent = compress(parent)
    parent = jax.lax.while_loop(lambda s: s[1], body, (parent, jnp.bool_(True)))[0]
    return jnp.where(fg[:n], parent[:n], BACKGROUND).reshape(h, w)


def _segment_boxes(labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Bounding boxes of labelled components: labels (H, W) int32 (-1 = none) ->
    (boxes int32 (H*W, 4) inclusive ``(xmin, ymin, xmax, ymax)`` indexed by label, present
    bool (H*W,))."""
    h, w = labels.shape
    n = h * w
    flat = labels.reshape(-1)
    slot = jnp.where(flat >= 0, flat, n)
    ys, xs = jnp.divmod(jnp.arange(n, dtype=jnp.int32), w)
    xy = jnp.stack([xs, ys], axis=-1)
    big = jnp.int32(np.iinfo(np.int32).max)
    # One two-wide scatter per reduction: fewer, larger ops than one per coordinate.
    low = jnp.full((n + 1, 2), big).at[slot].min(xy, mode="promise_in_bounds")[:n]
    high = jnp.full((n + 1, 2), -1).at[slot].max(xy, mode="promise_in_bounds")[:n]
    xmin, ymin, xmax, ymax = low[:, 0], low[:, 1], high[:, 0], high[:, 1]
    return jnp.stack([xmin, ymin, xmax, ymax], axis=-1), xmax >= 0


# --------------------------------------------------------------------------------------------
# Boxes and hits.


def _hits(boxes: jax.Array, present: jax.Array, gt: jax.Array, gt_valid, deltas) -> jax.Array:
    """Whether any present box has IoU >= delta / 100 with any valid GT box.

    boxes (K, 4), present (K,), gt (G, 4), gt_valid (G,) bool, deltas (D,) int -> (D,) bool.
    Inclusive coordinates, as ``calculate_multiple_iou``; a non-positive union gives IoU 0."""
    a = boxes[:, None, :]
    b = gt[None, :, :]
    iw = jnp.maximum(0, jnp.minimum(a[..., 2], b[..., 2]) - jnp.maximum(a[..., 0], b[..., 0]) + 1)
    ih = jnp.maximum(0, jnp.minimum(a[..., 3], b[..., 3]) - jnp.maximum(a[..., 1], b[..., 1]) + 1)
    inter = iw * ih
    area_a = (a[..., 2] - a[..., 0] + 1) * (a[..., 3] - a[..., 1] + 1)
    area_b = (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1)
    union = area_a + area_b - inter
    pair = present[:, None] & gt_valid[None, :]  # (K, G)
    d = deltas[:, None, None]
    hit = jnp.where(union > 0, 100 * inter >= d * union, d <= 0)  # (D, K, G)
    return jnp.any(hit & pair, axis=(1, 2))


def _outer_hits(labels: jax.Array, gt, gt_valid, deltas) -> jax.Array:
    """(D,) bool: does the box of any outer contour hit? labels: (H, W) fg components."""
    h, w = labels.shape
    boxes, present = _segment_boxes(labels)
    # Exclusive-style ends x + w, y + h, clipped to the last pixel.
    outer = jnp.stack(
        [
            boxes[:, 0],
            boxes[:, 1],
            jnp.minimum(boxes[:, 2] + 1, w - 1),
            jnp.minimum(boxes[:, 3] + 1, h - 1),
        ],
        axis=-1,
    )
    return _hits(outer, present, gt, gt_valid, deltas)


def _hole_hits(bg_labels: jax.Array, gt, gt_valid, deltas) -> jax.Array:
    """(D,) bool: does the box of any hole contour hit?

    bg_labels: (H+2, W+2) 4-connected background components of the map padded with a frame of
    background; the frame's component (label 0, it holds raster index 0) is the outside and
    every other component is a hole."""
    h, w = bg_labels.shape[0] - 2, bg_labels.shape[1] - 2
    boxes, present = _segment_boxes(bg_labels)
    present = present.at[0].set(False)
    # Padded coordinates are image + 1; a hole's border spans its box grown by one pixel.
    hole = jnp.stack(
        [
            boxes[:, 0] - 2,
            boxes[:, 1] - 2,
            jnp.minimum(boxes[:, 2] + 1, w - 1),
            jnp.minimum(boxes[:, 3] + 1, h - 1),
        ],
        axis=-1,
    )
    return _hits(hole, present, gt, gt_valid, deltas)


def _empty_hits(gt, gt_valid, deltas) -> jax.Array:
    """(D,) bool: a level without any contour is scored with the box (0, 0, 0, 0)."""
    return _hits(jnp.zeros((1, 4), jnp.int32), jnp.ones((1,), bool), gt, gt_valid, deltas)


def _sweep(step, init, levels, needed, num_out):
    """Scans ``step(carry, level) -> (carry, (B, D) hits)`` over ``levels``, skipping levels
    that no threshold of the batch probes (their hits stay False, the carry unchanged)."""

    def body(carry, level):
        return jax.lax.cond(
            needed[level],
            lambda c: step(c, level),
            lambda c: (c, jnp.zeros(num_out, bool)),
            carry,
        )

    return jax.lax.scan(body, init, levels)[1]


@jax.jit
def _all_level_hits_v2(q, gt_boxes, num_gt, deltas, needed):
    b, h, w = q.shape
    d = deltas.shape[0]
    gt_valid = jnp.arange(gt_boxes.shape[1]) < num_gt[:, None]
    qi = q.astype(jnp.int32)
    label8 = jax.vmap(lambda m, init: label_one(m, 8, init))
    label4 = jax.vmap(lambda m, init: label_one(m, 4, init))
    outer_hits = jax.vmap(_outer_hits, in_axes=(0, 0, 0, None))
    hole_hits = jax.vmap(_hole_hits, in_axes=(0, 0, 0, None))

    # Foreground grows as the level falls: sweep down, starting each level's labelling from
    # the previous one. The background grows as the level rises: sweep up for the holes.
    def fg_step(labels, level):
        labels = label8(qi > level, labels)
        return labels, outer_hits(labels, gt_boxes, gt_valid, deltas)

    down = jnp.arange(NUM_LEVELS - 1, -1, -1, dtype=jnp.int32)
    fg = _sweep(fg_step, jnp.full((b, h, w), -1, jnp.int32), down, needed, (b, d))[::-1]

    # The frame is background at every level (value -1 <= level).
    qp = jnp.pad(qi, ((0, 0), (1, 1), (1, 1)), constant_values=-1)

    def bg_step(labels, level):
        labels = label4(qp <= level, labels)
        return labels, hole_hits(labels, gt_boxes, gt_valid, deltas)

    up = jnp.arange(NUM_LEVELS, dtype=jnp.int32)
    holes = _sweep(bg_step, jnp.full((b, h + 2, w + 2), -1, jnp.int32), up, needed, (b, d))

    empty = jax.vmap(_empty_hits, in_axes=(0, 0, None))(gt_boxes, gt_valid, deltas)  # (B, D)
    peak = jnp.max(qi, axis=(1, 2))
    any_fg = up[:, None] < peak[None, :]  # (256, B)
    hits = jnp.where(any_fg[..., None], fg | holes, empty[None])
    return jnp.transpose(hits, (1, 2, 0))  # (B, D, 256)


def _outer_areas(fgp: jax.Array, lab: jax.Array, blab: jax.Array) -> jax.Array:
    """Twice the ``cv2.contourArea`` of every component's outer contour.

    fgp: (H+2, W+2) bool foreground padded with a frame of background; lab, blab: its
    8-connected foreground and 4-connected background labels. Returns int32 ((H+2)*(W+2),)
    indexed by foreground label (0 where there is no label).

    The contour is the polygon through the centres of the border pixels. Each of its edges lies
    in one 2x2 window of pixel centres and is decided by that window alone: an axis edge joins
    two foreground pixels whose other side is background, a diagonal edge joins two diagonal
    foreground pixels past a background pixel. Every edge faces a background pixel; the edges
    facing the background component that encloses the component (not one of its holes) make
    its outer contour, and their shoelace terms, walked with the background on the right, sum
    to its area. A hole's encloser is the foreground component just left of its first pixel.
    """
    hp, wp = fgp.shape
    npx = hp * wp
    flat_lab = lab.reshape(-1)
    # parent[B]: the fg label left of bg component B's first pixel; -1 for the outside (B = 0).
    idx = jnp.arange(npx, dtype=jnp.int32)
    parent = jnp.where(idx > 0, flat_lab[jnp.maximum(idx - 1, 0)], -1)

    ys = jnp.arange(hp - 1, dtype=jnp.int32)[:, None]
    corners = {
        "tl": (slice(0, -1), slice(0, -1), 0, 0),
        "tr": (slice(0, -1), slice(1, None), 1, 0),
        "bl": (slice(1, None), slice(0, -1), 0, 1),
        "br": (slice(1, None), slice(1, None), 1, 1),
    }
    f = {k: fgp[r, c] for k, (r, c, _, _) in corners.items()}
    lb = {k: lab[r, c] for k, (r, c, _, _) in corners.items()}
    bl = {k: blab[r, c] for k, (r, c, _, _) in corners.items()}
    off = {k: (dx, dy) for k, (_, _, dx, dy) in corners.items()}
    # (from, to, facing, condition): the background pixel `facing` is on the right of the walk.
    edges = [
        ("tl", "tr", "bl", f["tl"] & f["tr"] & ~f["bl"] & ~f["br"]),
        ("br", "bl", "tl", f["bl"] & f["br"] & ~f["tl"] & ~f["tr"]),
        ("bl", "tl", "tr", f["tl"] & f["bl"] & ~f["tr"] & ~f["br"]),
        ("tr", "br", "tl", f["tr"] & f["br"] & ~f["tl"] & ~f["bl"]),
        ("br", "tl", "tr", f["tl"] & f["br"] & ~f["tr"]),
        ("tl", "br", "bl", f["tl"] & f["br"] & ~f["bl"]),
        ("tr", "bl", "tl", f["tr"] & f["bl"] & ~f["tl"]),
        ("bl", "tr", "br", f["tr"] & f["bl"] & ~f["br"]),
    ]
    slots, terms = [], []
    for a, b, facing, cond in edges:
        comp = lb[a]
        outer = cond & (parent[jnp.maximum(bl[facing], 0)] != comp)
        (xa, ya), (xb, yb) = off[a], off[b]
        # Shoelace as trapezoids, (x_b - x_a) * (y_a + y_b): small terms, no int32 overflow.
        term = jnp.broadcast_to((xb - xa) * (2 * ys + ya + yb), cond.shape)
        slots.append(jnp.where(outer, comp, npx).reshape(-1))
        terms.append(jnp.where(outer, term, 0).reshape(-1))
    area2 = (
        jnp.zeros((npx + 1,), jnp.int32)
        .at[jnp.concatenate(slots)]
        .add(jnp.concatenate(terms), mode="promise_in_bounds")
    )
    return jnp.abs(area2[:npx])


def _largest_contour_hits(fgp, lab, gt, gt_valid, deltas) -> jax.Array:
    """(D,) bool: does the box of the largest contour hit? fgp, lab: padded mask and labels.

    ``max(contours, key=cv2.contourArea)`` keeps the first maximum in OpenCV's order (a
    depth-first walk of the contour tree, siblings latest-found first). An enclosed contour
    never has more area than its enclosers, and one with equal area has the same polygon and
    box, so the winner is an outermost component: the one of largest outer area, ties going to
    the component found last in the raster scan, i.e. the largest label."""
    hp, wp = fgp.shape
    h, w = hp - 2, wp - 2
    npx = hp * wp
    area2 = _outer_areas(fgp, lab, label_one(~fgp, 4))
    ids = jnp.arange(npx, dtype=jnp.int32)
    root = lab.reshape(-1) == ids
    best_area = jnp.max(jnp.where(root, area2, -1))
    best = jnp.max(jnp.where(root & (area2 == best_area), ids, -1))
    sel = lab == best
    cols = jnp.any(sel, axis=0)
    rows = jnp.any(sel, axis=1)
    # Padded coordinates: image x = padded x - 1.
    x0 = jnp.argmax(cols) - 1
    y0 = jnp.argmax(rows) - 1
    x1 = wp - 2 - jnp.argmax(cols[::-1])
    y1 = hp - 2 - jnp.argmax(rows[::-1])
    box = jnp.stack([x0, y0, jnp.minimum(x1 + 1, w - 1), jnp.minimum(y1 + 1, h - 1)])
    return _hits(box[None].astype(jnp.int32), jnp.ones((1,), bool), gt, gt_valid, deltas)


@jax.jit
def _all_level_hits_v1(q, gt_boxes, num_gt, deltas, needed):
    b = q.shape[0]
    d = deltas.shape[0]
    gt_valid = jnp.arange(gt_boxes.shape[1]) < num_gt[:, None]
    qp = jnp.pad(q.astype(jnp.int32), ((0, 0), (1, 1), (1, 1)), constant_values=-1)
    label8 = jax.vmap(lambda m, init: label_one(m, 8, init))
    largest = jax.vmap(_largest_contour_hits, in_axes=(0, 0, 0, 0, None))

    def step(labels, level):
        fgp = qp > level
        labels = label8(fgp, labels)
        return labels, largest(fgp, labels, gt_boxes, gt_valid, deltas)

    down = jnp.arange(NUM_LEVELS - 1, -1, -1, dtype=jnp.int32)
    hits = _sweep(step, jnp.full(qp.shape, -1, jnp.int32), down, needed, (b, d))[::-1]
    empty = jax.vmap(_empty_hits, in_axes=(0, 0, None))(gt_boxes, gt_valid, deltas)
    peak = jnp.max(q.astype(jnp.int32), axis=(1, 2))
    any_fg = jnp.arange(NUM_LEVELS)[:, None] < peak[None, :]
    hits = jnp.where(any_fg[..., None], hits, empty[None])
    return jnp.transpose(hits, (1, 2, 0))


@jax.jit
def needed_levels(q, table):
    """(256,) bool: the levels some threshold of the batch probes."""
    peak = jnp.max(q.astype(jnp.int32), axis=(-2, -1))
    return jnp.zeros((NUM_LEVELS,), bool).at[table[peak].reshape(-1)].set(True)


def level_hits(q, gt_boxes, num_gt, deltas, multi_contour: bool, needed=None) -> jax.Array:
    """(B, D, 256) bool hits per map, IoU threshold and level; arguments as ``wsol.level_hits``
    after its checks (int32 arrays, traceable). ``needed``: optional (256,) bool of levels to
    evaluate (others come back False), e.g. from ``needed_levels``."""
    if needed is None:
        needed = jnp.ones((NUM_LEVELS,), bool)
    fn = _all_level_hits_v2 if multi_contour else _all_level_hits_v1
    return fn(q, gt_boxes, num_gt, deltas, needed)


@jax.jit
def _counts_from_level_hits(level_hits, q, table, masks):
    """(K, D, T) counts of the images of each of the K (B,) masks."""
    peak = jnp.max(q.astype(jnp.int32), axis=(-2, -1))  # (B,)
    levels = table[peak]  # (B, T)
    hits = jnp.take_along_axis(level_hits, levels[:, None, :], axis=-1)  # (B, D, T)
    return jnp.einsum("kb,bdt->kdt", masks.astype(jnp.int32), hits.astype(jnp.int32))


def level_hits_checked(
    quantized, gt_boxes, num_gt, iou_thresholds=(30, 50, 70), multi_contour=True
):
    """``wsol.level_hits`` computed here: (B, D, 256) bool jax array (jittable)."""
    q, gt, num_gt, deltas = wsol._check_box_inputs(quantized, gt_boxes, num_gt, iou_thresholds)
    args = (jnp.asarray(q), jnp.asarray(gt), jnp.asarray(num_gt), jnp.asarray(deltas))
    return level_hits(*args, multi_contour)


def box_correct_counts(
    quantized,
    gt_boxes,
    num_gt,
    thresholds=None,
    iou_thresholds=(30, 50, 70),
    multi_contour=True,
    valid=None,
):
    """``wsol.box_correct_counts`` computed here: (D, T) or (K, D, T) int32 numpy counts."""
    thresholds = wsol.default_thresholds() if thresholds is None else thresholds
    table = jnp.asarray(wsol.threshold_levels(thresholds))
    q, gt, num_gt, deltas = wsol._check_box_inputs(quantized, gt_boxes, num_gt, iou_thresholds)
    b = q.shape[0]
    valid = np.ones((b,), bool) if valid is None else np.asarray(valid, bool)
    if valid.shape[-1:] != (b,) or valid.ndim > 2:
        raise ValueError(f"valid must have shape ({b},) or (K, {b}), got {valid.shape}.")
    q = jnp.asarray(q)
    args = (q, jnp.asarray(gt), jnp.asarray(num_gt), jnp.asarray(deltas))
    hits = level_hits(*args, multi_contour, needed_levels(q, table))
    counts = np.asarray(_counts_from_level_hits(hits, q, table, jnp.asarray(valid.reshape(-1, b))))
    return counts.reshape(valid.shape[:-1] + counts.shape[1:])
