"""PxAP of the WSOL protocol (Choe et al., CVPR 2020): pixel precision-recall from GT masks.

``pxap_histograms`` bins the scores of GT-foreground and GT-background pixels with the
reference evaluator's ``MaskEvaluator`` bins on device; ``PxAPAccumulator`` sums them over
batches and hosts and finishes PxAP in float64 numpy with the reference's formula.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from camjax.localization.wsol import _check_thresholds, _check_unit_interval, default_thresholds


def pxap_bin_edges(thresholds=None) -> np.ndarray:
    """The evaluator's histogram edges ``thresholds + [1, 2, 3]``, float64 (T + 3,)."""
    thresholds = default_thresholds() if thresholds is None else thresholds
    t = _check_thresholds(thresholds)
    if np.any(np.diff(t) < 0):  # float32 maps would be binned silently wrong, float64 refused
        raise ValueError("PxAP's thresholds are histogram edges: sort them in increasing order.")
    return np.append(t, [1.0, 2.0, 3.0])


def _float32_ceil(edges: np.ndarray) -> np.ndarray:
    """Smallest float32 >= each float64 edge, so ``x >= edge`` is exact for float32 x."""
    e32 = edges.astype(np.float32)
    low = e32.astype(np.float64) < edges
    e32[low] = np.nextafter(e32[low], np.float32(np.inf))
    return e32


@jax.jit
def _histograms(scoremaps, masks, edges):
    x = scoremaps.reshape(-1).astype(jnp.float32)
    m = masks.reshape(-1)
    nbins = edges.shape[0] - 1
    # np.histogram: bin k holds edges[k] <= x < edges[k + 1]; the last bin also holds its
    # right edge; values outside [edges[0], edges[-1]] are dropped.
    k = jnp.searchsorted(edges, x, side="right") - 1
    k = jnp.where(x == edges[-1], nbins - 1, k)
    inside = (k >= 0) & (k < nbins)
    k = jnp.where(inside, k, nbins)
    fg = jnp.zeros((nbins + 1,), jnp.int32).at[k].add((m == 1) & inside)
    bg = jnp.zeros((nbins + 1,), jnp.int32).at[k].add((m == 0) & inside)
    return jnp.stack([fg[:nbins], bg[:nbins]])


def pxap_histograms(
    scoremaps: jax.Array | np.ndarray, masks: jax.Array | np.ndarray, thresholds=None
) -> jax.Array | np.ndarray:
    """Score histograms of GT-foreground and GT-background pixels (``MaskEvaluator``).

    Args:
      scoremaps: (B, H, W) float in [0, 1], compared with the float64 bin edges exactly in the
        maps' own precision: float32 (or narrower) maps on device; float64 maps (numpy, or jax
        with x64) on the host with the reference's own ``np.histogram``, never rounded to
        float32 first (which would move a score just below an edge onto it).
      masks: (B, H, W) integer, the evaluator's convention: 1 foreground, 0 background, any
        other value (255) ignored.
      thresholds: (T,) in [0, 1]; default ``default_thresholds()``.

    Returns:
      (2, T + 2) int32: row 0 foreground, row 1 background counts per bin; a jax array, or a
      numpy array for float64 maps.
    """
    # jax arrays (and tracers) stay where they are; anything else becomes numpy.
    s = scoremaps if isinstance(scoremaps, jax.Array) else np.asarray(scoremaps)
    m = masks if isinstance(masks, jax.Array) else np.asarray(masks)
    if s.ndim != 3 or not jnp.issubdtype(s.dtype, jnp.floating):
        raise ValueError(f"scoremaps must be (B, H, W) float, got {s.dtype} {s.shape}.")
    if m.shape != s.shape or not jnp.issubdtype(m.dtype, jnp.integer):
        raise ValueError(f"masks must be integer with shape {s.shape}, got {m.dtype} {m.shape}.")
    _check_unit_interval(s)
    edges = pxap_bin_edges(thresholds)
    if s.dtype.itemsize > 4:
        if isinstance(s, jax.core.Tracer):
            raise ValueError("float64 scoremaps are binned on the host: call outside jax.jit.")
        # The reference's own arithmetic: float64 scores against float64 edges.
        s, m = np.asarray(s, np.float64), np.asarray(m)
        fg = np.histogram(s[m == 1], bins=edges)[0]
        bg = np.histogram(s[m == 0], bins=edges)[0]
        return np.stack([fg, bg]).astype(np.int32)
    return _histograms(jnp.asarray(s), jnp.asarray(m), jnp.asarray(_float32_ceil(edges)))


def pxap_from_histograms(true_hist: np.ndarray, false_hist: np.ndarray) -> float:
    """PxAP in percent from the two histograms, with ``MaskEvaluator.compute``'s float64
    arithmetic (precision summed against recall steps, bins of empty predictions skipped)."""
    true_hist = np.asarray(true_hist, np.float64)
    false_hist = np.asarray(false_hist, np.float64)
    tp = true_hist[::-1].cumsum()
    fn = true_hist.sum() - tp
    fp = false_hist[::-1].cumsum()
    if np.all(tp + fn <= 0):
        raise ValueError("no GT-foreground pixel was evaluated.")
    if np.all(tp + fp <= 0):
        raise ValueError("no pixel was evaluated (all ignored).")
    predicted = (tp + fp) != 0
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = tp / (tp + fp)
        recall = tp / (tp + fn)
    return float((precision[1:] * np.diff(recall))[predicted[1:]].sum() * 100)


@dataclasses.dataclass
class PxAPAccumulator:
    """Streaming PxAP histograms; ``merge`` combines hosts or shards."""

    thresholds: np.ndarray = dataclasses.field(default_factory=default_thresholds)
    histograms: np.ndarray | None = None

    def __post_init__(self):
        self.thresholds = _check_thresholds(self.thresholds)
        if self.histograms is None:
            self.histograms = np.zeros((2, len(self.thresholds) + 2), np.int64)

    def update(self, histograms: jax.Array) -> None:
        """Adds one batch of ``pxap_histograms`` (2, T + 2)."""
        h = np.asarray(jax.device_get(histograms), np.int64)
        if h.shape != self.histograms.shape:
            raise ValueError(f"histograms must have shape {self.histograms.shape}, got {h.shape}.")
        self.histograms = self.histograms + h

    def merge(self, other: "PxAPAccumulator") -> None:
        """Adds another accumulator's histograms, in place as ``update``."""
        if not np.array_equal(self.thresholds, other.thresholds):
            raise ValueError("cannot merge histograms made with different thresholds.")
        self.histograms = self.histograms + other.histograms

    def pxap(self) -> float:
        return pxap_from_histograms(self.histograms[0], self.histograms[1])
