"""Bounding boxes from score maps: the CAM paper's largest-connected-component heuristic.

Zhou et al. (2016) localise an object by thresholding the min-max normalised CAM at a fraction
of its maximum (0.2 in the paper) and boxing the largest 8-connected component of the kept
pixels. Here the whole procedure is pure JAX on arrays, so a batch of maps and a sweep of
thresholds are boxed on device by one compiled function.

The WSOL evaluation code (Choe et al., 2020) approximates the same idea through OpenCV
contours, which differs in details this module does not copy: it quantises the map to uint8,
keeps pixels strictly above ``int(threshold * max)``, picks the contour of largest polygon
area (not pixel count), and clips the exclusive ends to ``W - 1`` and ``H - 1``.

Conventions:

* labels: int32, background ``BACKGROUND = -1``; a component's label is the smallest raster
  index ``y * W + x`` among its pixels, so labels are deterministic and ordered like a scan;
* boxes: int32 ``(x0, y0, x1, y1)`` in pixels with ``x1``, ``y1`` exclusive (a component over
  columns ``a..b`` has ``x0 = a, x1 = b + 1``); an empty mask gives ``(0, 0, 0, 0)``;
* the largest component has the most pixels; ties go to the smaller label.

Connected-component labelling is a data-parallel union-find (in the spirit of Shiloach-Vishkin
and FastSV): every pass takes the minimum label over each 3x3 neighbourhood, hooks the root of
each pixel's tree onto that minimum, and compresses all trees to their roots by pointer
jumping. Hooking whole trees rather than single pixels is what keeps the number of passes
small (about ten on 224x224 blobs, spirals and snakes), where plain label propagation would
need as many passes as the snake is long.
"""

import jax
import jax.numpy as jnp
import numpy as np

BACKGROUND = -1


def _check_mask(mask: jax.Array, name: str = "mask") -> jax.Array:
    mask = jnp.asarray(mask)
    if mask.dtype != jnp.bool_:
        raise ValueError(
            f"{name} must be a boolean array (threshold a score map first), got {mask.dtype}."
        )
    if mask.ndim < 2:
        raise ValueError(f"{name} must have rank >= 2 (..., H, W), got shape {mask.shape}.")
    if mask.shape[-2] == 0 or mask.shape[-1] == 0:
        raise ValueError(f"{name} must have non-empty spatial axes, got shape {mask.shape}.")
    return mask


def _over_batch(fn, x: jax.Array) -> jax.Array:
    """Applies a per-map ``fn`` (H, W) -> (*out) to x (..., H, W) -> (..., *out) with vmap."""
    lead = x.shape[:-2]
    flat = x.reshape((-1, *x.shape[-2:]))
    out = jax.vmap(fn)(flat)
    return out.reshape(lead + out.shape[1:])


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


def label_components(mask: jax.Array) -> jax.Array:
    """Labels the 8-connected components of boolean masks.

    Args:
      mask: (..., H, W) bool; any leading batch axes.

    Returns:
      (..., H, W) int32: ``BACKGROUND`` (-1) off the mask, otherwise the smallest raster index
      ``y * W + x`` of the pixel's component. Diagonal contact connects.
    """
    mask = _check_mask(mask)
    return _over_batch(label_one, mask)


def _box_one(mask: jax.Array) -> jax.Array:
    """Boxes the largest component of one map: (H, W) bool -> (4,) int32."""
    h, w = mask.shape
    n = h * w
    labels = label_one(mask).reshape(-1)
    # Background pixels are counted in an extra bin n so they can never win.
    bins = jnp.where(labels < 0, n, labels)
    counts = jnp.zeros((n + 1,), jnp.int32).at[bins].add(1, mode="promise_in_bounds")[:n]
    best = jnp.argmax(counts)  # First maximum: ties go to the earlier raster index.
    selected = (labels == best).reshape(h, w)
    cols = jnp.any(selected, axis=0)
    rows = jnp.any(selected, axis=1)
    box = jnp.stack(
        [
            jnp.argmax(cols),
            jnp.argmax(rows),
            w - jnp.argmax(cols[::-1]),
            h - jnp.argmax(rows[::-1]),
        ]
    ).astype(jnp.int32)
    return jnp.where(jnp.any(selected), box, 0)


def largest_component_box(mask: jax.Array) -> jax.Array:
    """Bounding box of the largest 8-connected component of each mask.

    Args:
      mask: (..., H, W) bool; any leading batch axes.

    Returns:
      (..., 4) int32 ``(x0, y0, x1, y1)``, ``x1`` and ``y1`` exclusive; ``(0, 0, 0, 0)`` for an
      empty mask. Largest means most pixels; ties go to the component met first in raster
      order.
    """
    mask = _check_mask(mask)
    return _over_batch(_box_one, mask)


def check_float_maps(maps, name: str) -> jax.Array:
    """maps as a jax array, or a ValueError unless it is a float (..., H, W) array."""
    maps = jnp.asarray(maps)
    if not jnp.issubdtype(maps.dtype, jnp.floating):
        raise ValueError(f"{name} must be a float array, got {maps.dtype}.")
    if maps.ndim < 2:
        raise ValueError(f"{name} must have rank >= 2 (..., H, W), got {maps.shape}.")
    return maps


def _check_threshold(threshold) -> None:
    try:
        values = np.asarray(threshold)
    except jax.errors.TracerArrayConversionError:
        return  # Traced thresholds are the caller's responsibility (e.g. a jitted sweep).
    if values.dtype == np.bool_ or not np.issubdtype(values.dtype, np.number):
        raise ValueError(f"threshold must be a real number in [0, 1], got dtype {values.dtype}.")
    if np.iscomplexobj(values) or not np.all((values >= 0) & (values <= 1)):
        raise ValueError(f"threshold must lie in [0, 1], got {threshold!r}.")


def box_from_scoremap(scoremap: jax.Array, threshold: float | jax.Array = 0.2) -> jax.Array:
    """The CAM paper's box: largest component of ``scoremap >= threshold``.

    Args:
      scoremap: (..., H, W) float, each map already min-max normalised to [0, 1].
      threshold: scalar or array broadcastable against the leading axes ``...`` of
        ``scoremap``, values in [0, 1] (checked when not traced). Pass it as a jit argument so
        one compiled function serves every threshold; e.g. ``scoremap`` (B, H, W) with
        ``threshold`` (T, 1) boxes every map at every threshold.

    Returns:
      (*broadcast(..., threshold.shape), 4) int32 ``(x0, y0, x1, y1)``, exclusive ends;
      ``(0, 0, 0, 0)`` where nothing reaches the threshold.
    """
    scoremap = check_float_maps(scoremap, "scoremap")
    _check_threshold(threshold)
    threshold = jnp.asarray(threshold, scoremap.dtype)
    return largest_component_box(scoremap >= threshold[..., None, None])
