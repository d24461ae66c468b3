"""Faithfulness of saliency maps: Average Drop, Increase in Confidence, Deletion, Insertion, and
the pointing game; batched, jitted, and summed over a split.

Every function is pure and jittable; `forward(images (N, H, W, 3)) -> logits (N, C)` is the
model on its own input (normalised images for camjax's networks), and `maps` are (B, H, W)
saliency maps at that input's resolution (an explainer's `cams[:, 0]` with size='input').

Definitions (camjax's defaults first; the peers' variants are options):

* Average Drop / Increase in Confidence (Chattopadhyay et al., WACV 2018, "Grad-CAM++"):
  y = the class's softmax probability on the image, o = on the image multiplied by its map
  (min-max normalised to [0, 1], upsampled to the image; the product is taken in the model's
  input space, as pytorch-grad-cam and TorchCAM both do). Per image: drop = max(0, y - o) / y
  (0 where y is 0: a probability that underflows float32, as for a confidently wrong image, has
  nothing to drop), increase = 1[o > y]; reported as percentages (x 100) of the mean; with
  score 'softmax' only (a negative logit would flip the drop's sign). Variants: 'torchcam'
  (`torchcam/metrics.py ClassificationMetric`: relu(y - o) / (y + 1e-7), 1[y < o], fractions)
  and 'grad_cam' (`pytorch_grad_cam/metrics/cam_mult_image.py DropInConfidence`: relu(y - o),
  not divided by y; `IncreaseInConfidence`: 1[o - y > 0]). `score`: 'softmax' (the paper's,
  and what the peers' docs recommend) or 'logit' (the peers' defaults).
* Deletion / Insertion (Petsiuk et al., BMVC 2018, RISE; eclique/RISE `evaluation.py
  CausalMetric`): pixels ranked by decreasing saliency (a stable sort: ties in raster order, as
  TorchCAM; RISE's numpy argsort breaks ties arbitrarily), `step` pixels (all 3 channels)
  changed per step, scores after 0, step, 2 step, ..., P changed pixels (n_steps + 1 points,
  n_steps = ceil(P / step)). Deletion moves from the image to zeros (in the model's input
  space, RISE's `torch.zeros_like`), insertion from a blurred image to the image (RISE's
  `gkern(11, 5)`: per-channel Gaussian, sigma 5, 11 x 11, zero padding). The score is the
  class's softmax probability, as in RISE (`score='logit'`: its logit, whose AUC has no bound).
  AUC: the trapezoid rule over the fraction of changed pixels, in [0, 1] for probabilities; it
  equals RISE's `auc` (uniform grid) when step divides P (the image width does: the step of
  RISE's single-image demo, 224 at 224; its batch evaluation uses 8 x 224), and TorchCAM's
  `torch.trapezoid(curve, fractions)` always.
* The pointing game (`camjax.evaluation.pointing`), summed and reported with these.

The maps are an input: the same metric on differently made maps gives different numbers. The
peers' whole pipelines make them differently from camjax's explainer (size='input' upsamples
the raw map, bicubic by default, then min-max normalises it; the score differentiated is the
logit). TorchCAM's `ClassificationMetric(extractor, softmax)` min-max normalises at the layer's
resolution, upsamples bilinearly without renormalising (peaks stay below 1), and its extractor
differentiates the softmax probability. camjax reproduces it (tested against TorchCAM) with
`explainer(..., size=None)` called with the target `lambda z: softmax(z)[b, class_b]`,
`resize_maps(maps, (H, W), 'bilinear')` and variant 'torchcam'. grad-cam's metrics take the
maps they are given.

Memory. `deletion_insertion_curves` evaluates `chunk` points of both curves at once: the model
runs on 2 * chunk * B images per scan iteration, so the peak is about that many forward
passes' activations plus 2 * chunk * B * H * W * 3 float32 inputs (chunk 8, B 128 at 64 x 64:
100 MB of inputs); the curves themselves are (B, n_steps + 1).
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from camjax import errors, explicit_axes
from camjax.evaluation import pointing
from camjax.explain import check_images

Forward = Callable[[jax.Array], jax.Array]

DROP_VARIANTS = ("paper", "torchcam", "grad_cam")
SCORES = ("softmax", "logit")


def class_scores(logits: jax.Array, classes: jax.Array, score: str = "softmax") -> jax.Array:
    """(B,) float32 score of each row's class (NaN for a class outside [0, C)).
    logits: (B, C); classes: (B,) int."""
    if score not in SCORES:
        raise ValueError(f"score must be one of {SCORES}; got {score!r}.")
    logits = logits.astype(jnp.float32)
    values = jax.nn.softmax(logits, axis=-1) if score == "softmax" else logits
    # A class outside [0, C) scores NaN (flagged by `batch_sums`), never another class's score:
    # checked before narrowing (an int64 2**32 + 3 would wrap to 3), and -1 would read class C-1.
    num_classes = logits.shape[-1]
    in_range = (classes >= 0) & (classes < num_classes)
    index = jnp.where(in_range, classes, 0).astype(jnp.int32)[:, None]
    return jnp.where(in_range, jnp.take_along_axis(values, index, axis=-1)[:, 0], jnp.nan)


# --------------------------------------------------------------------------------------------
# Average Drop and Increase in Confidence.


def confidence_change(
    forward: Forward,
    images: jax.Array,
    maps: jax.Array,
    classes: jax.Array,
    score: str = "softmax",
) -> tuple[jax.Array, jax.Array]:
    """(y, o): the class's score on the images and on images * maps, each (B,) float32.

    images: (B, H, W, 3) float, the model's input; maps: (B, H, W) in [0, 1]; classes: (B,).
    """
    _check_maps(images, maps, classes)
    y = class_scores(forward(images), classes, score)
    o = class_scores(forward(images * maps[..., None].astype(images.dtype)), classes, score)
    return y, o


def drop_and_increase(
    y: jax.Array, o: jax.Array, variant: str = "paper"
) -> tuple[jax.Array, jax.Array]:
    """Per-image (drop, increase), each (B,) float32, as `variant` defines them (module doc);
    the means are Average Drop and Increase in Confidence (x 100 for 'paper')."""
    if variant == "paper":
        drop = jnp.maximum(y - o, 0.0) / jnp.where(y > 0, y, 1.0)  # 0 / 0 where y underflows
        return drop, (o > y).astype(jnp.float32)
    if variant == "torchcam":
        return jax.nn.relu(y - o) / (y + 1e-7), (y < o).astype(jnp.float32)
    if variant == "grad_cam":
        diff = o - y
        return jnp.maximum(-diff, 0.0), (diff > 0).astype(jnp.float32)
    raise ValueError(f"variant must be one of {DROP_VARIANTS}; got {variant!r}.")


# --------------------------------------------------------------------------------------------
# Deletion and Insertion (RISE).


def gaussian_kernel(klen: int = 11, sigma: float = 5.0) -> np.ndarray:
    """RISE's `gkern(klen, nsig)`: `scipy.ndimage.gaussian_filter` (reflect mode, truncate 4)
    of a klen x klen delta, in numpy. Returns (klen, klen) float32 (it sums to 1 only
    approximately: the filter's tails fold back at the delta's borders)."""
    radius = int(4.0 * sigma + 0.5)
    t = np.arange(-radius, radius + 1)
    w = np.exp(-0.5 * (t / sigma) ** 2)
    w /= w.sum()
    delta = np.zeros(klen)
    delta[klen // 2] = 1.0
    period = 2 * klen
    k1 = np.zeros(klen)
    for j in range(klen):
        p = np.mod(j + t, period)
        p = np.where(p >= klen, period - 1 - p, p)  # reflect: d c b a | a b c d | d c b a
        k1[j] = np.sum(w * delta[p])
    return np.outer(k1, k1).astype(np.float32)


def rise_blur(images: jax.Array, klen: int = 11, sigma: float = 5.0) -> jax.Array:
    """RISE's insertion substrate: each channel convolved with `gaussian_kernel(klen, sigma)`,
    zero padding (the borders darken, as `conv2d(x, kern, padding=klen // 2)`).
    images: (B, H, W, 3) -> (B, H, W, 3) float32."""
    k = jnp.asarray(gaussian_kernel(klen, sigma))
    c = images.shape[-1]
    kernel = jnp.tile(k[:, :, None, None], (1, 1, 1, c))  # HWIO, depthwise
    return jax.lax.conv_general_dilated(
        images.astype(jnp.float32),
        kernel,
        window_strides=(1, 1),
        padding=[(klen // 2, klen // 2)] * 2,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=c,
        precision=jax.lax.Precision.HIGHEST,
    )


def curve_counts(num_pixels: int, step: int) -> np.ndarray:
    """Changed pixels at each point of a curve: 0, step, ..., P (n_steps + 1 int32)."""
    if not errors.is_int_at_least(step, 1):
        raise ValueError(f"step must be a positive int, pixels per step; got {step!r}.")
    n_steps = -(-num_pixels // step)
    return np.minimum(np.arange(n_steps + 1) * step, num_pixels).astype(np.int32)


def saliency_ranks(maps: jax.Array) -> jax.Array:
    """(B, P) int32 rank of each pixel (raster order) by decreasing saliency, ties in raster
    order. maps: (B, H, W)."""
    flat = maps.reshape(maps.shape[0], -1)
    order = jnp.argsort(flat, axis=-1, stable=True, descending=True)
    return jnp.argsort(order, axis=-1).astype(jnp.int32)


def deletion_insertion_curves(
    forward: Forward,
    images: jax.Array,
    maps: jax.Array,
    classes: jax.Array,
    *,
    step: int,
    insertion_start: jax.Array | None = None,
    deletion_end: jax.Array | None = None,
    chunk: int = 8,
    score: str = "softmax",
) -> tuple[jax.Array, jax.Array]:
    """(deletion, insertion) curves, each (B, n_steps + 1) float32, in one scan.

    images: (B, H, W, 3) model input; maps: (B, H, W); classes: (B,). Deletion goes from the
    images to `deletion_end` (default zeros), insertion from `insertion_start` (default
    `rise_blur(images)`) to the images, `step` pixels per step in order of `saliency_ranks`.
    chunk: curve points evaluated together (memory: see the module doc).
    """
    _check_maps(images, maps, classes)
    if not errors.is_int_at_least(chunk, 1):
        raise ValueError(f"chunk must be a positive int, curve points per pass; got {chunk!r}.")
    b, h, w, _ = images.shape
    counts = jnp.asarray(curve_counts(h * w, step))
    ranks = saliency_ranks(maps).reshape(b, h, w, 1)
    blurred = rise_blur(images) if insertion_start is None else insertion_start
    zeros = jnp.zeros_like(images) if deletion_end is None else deletion_end
    starts = jnp.concatenate([images, blurred.astype(images.dtype)])
    ends = jnp.concatenate([zeros.astype(images.dtype), images])
    ranks2, classes2 = jnp.concatenate([ranks, ranks]), jnp.concatenate([classes, classes])

    def point(count):
        x = jnp.where(ranks2 < count, ends, starts)
        return class_scores(forward(x), classes2, score)

    curves = jax.lax.map(point, counts, batch_size=min(chunk, counts.shape[0]))  # (S, 2B)
    return curves[:, :b].T, curves[:, b:].T


def curve_auc(curves: jax.Array, num_pixels: int, step: int) -> jax.Array:
    """Trapezoid area under (B, S) curves over the fraction of changed pixels, (B,)."""
    x = curve_counts(num_pixels, step).astype(np.float64) / num_pixels
    dx = jnp.asarray(np.diff(x), jnp.float32)
    return jnp.sum(dx * (curves[:, 1:] + curves[:, :-1]) / 2, axis=-1)


# --------------------------------------------------------------------------------------------
# Streaming over a split.


@dataclasses.dataclass(frozen=True)
class FaithfulnessSettings:
    """What to compute. step: pixels per deletion/insertion step (0: the image width, as RISE's
    single-image demo's 224 at 224 x 224); chunk: curve points per scan iteration; variant,
    score: Average Drop's definition (module doc); tolerance: the pointing game's, pixels."""

    step: int = 0
    chunk: int = 8
    variant: str = "paper"
    score: str = "softmax"
    tolerance: float = 15.0
    deletion_insertion: bool = True
    pointing: bool = True

    def __post_init__(self):
        if self.variant not in DROP_VARIANTS:
            raise ValueError(f"variant must be one of {DROP_VARIANTS}; got {self.variant!r}.")
        if self.score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}; got {self.score!r}.")
        if self.variant == "paper" and self.score != "softmax":
            raise ValueError(
                "variant 'paper' divides by the class's probability (score 'softmax'); a "
                "logit can be negative and flip the drop's sign. Use score='softmax', or the "
                "peers' variant 'torchcam' or 'grad_cam' with score='logit'."
            )
        for name, low in (("step", 0), ("chunk", 1)):
            value = getattr(self, name)
            if not errors.is_int_at_least(value, low):
                raise ValueError(f"{name} must be an int >= {low}; got {value!r}.")
        tol = self.tolerance  # not NaN (0 < NaN is False), not a bool (True is 1)
        if isinstance(tol, bool) or not isinstance(tol, numbers.Real) or not 0 < tol < np.inf:
            raise ValueError(f"tolerance must be a finite number of pixels > 0; got {tol!r}.")

    def pixels_per_step(self, width: int) -> int:
        return self.step or width


def batch_sums(
    forward: Forward,
    images: jax.Array,
    maps: jax.Array,
    classes: jax.Array,
    valid: jax.Array,
    settings: FaithfulnessSettings,
    *,
    point_maps: jax.Array | None = None,
    gt_masks: jax.Array | None = None,
    labels: jax.Array | None = None,
    num_classes: int = 0,
) -> dict[str, jax.Array]:
    """The sums of one batch (jittable; padding rows, valid False, count nothing).

    maps: (B, H, W) in [0, 1], of `classes` (B,), for Average Drop, Increase and the curves
    (`summary` refuses sums that counted a map outside [0, 1]).
    point_maps, gt_masks (B, H, W), labels (B,): the pointing game (maps of the GT class),
    counted per class in (num_classes,) arrays. An image whose map is NaN (an explainer's
    invalid class) counts nowhere, as TorchCAM discards it ('nan' counts it; 'pointing_nan'
    for the pointing game); so does one whose image, map or scores are not finite, or whose
    class (label) is outside [0, C): values known only on device under the caller's jit.
    """
    _check_batch(images, maps, classes, valid, labels, point_maps, gt_masks)
    # On a mesh with Explicit axes, run with them Auto; the sums come back replicated.
    sums = functools.partial(_batch_sums, forward, settings=settings, num_classes=num_classes)
    arrays = (images, maps, classes, valid, point_maps, gt_masks, labels)
    return explicit_axes.with_auto_axes(sums, images, explicit_axes.REPLICATED, *arrays)


def _batch_sums(
    forward, images, maps, classes, valid, point_maps, gt_masks, labels, *, settings, num_classes
):
    # The images' own finiteness: a NaN or Inf pixel can vanish on its way through a network's
    # max or ReLU, and one through the product with a map makes that image's scores NaN.
    finite = jnp.all(jnp.isfinite(images), axis=(1, 2, 3))
    ok = valid & finite & jnp.all(jnp.isfinite(maps), axis=(1, 2))
    maps = jnp.where(ok[:, None, None], maps, 0.0)
    y, o = confidence_change(forward, images, maps, classes, settings.score)
    # NaN scores: a class outside [0, C) (`class_scores`), or logits that are not finite.
    ok &= jnp.isfinite(y) & jnp.isfinite(o)
    drop, increase = drop_and_increase(y, o, settings.variant)
    per_image = {"drop": drop, "increase": increase}
    if settings.deletion_insertion:
        h, wd = images.shape[1:3]
        step = settings.pixels_per_step(wd)
        deletion, insertion = deletion_insertion_curves(
            forward, images, maps, classes, step=step, chunk=settings.chunk, score=settings.score
        )
        per_image["deletion"] = curve_auc(deletion, h * wd, step)
        per_image["insertion"] = curve_auc(insertion, h * wd, step)
        ok &= jnp.isfinite(per_image["deletion"]) & jnp.isfinite(per_image["insertion"])
    # Average Drop multiplies the image by the map, so a map outside [0, 1] (not normalised)
    # gives a number of no definition: counted here, refused by `summary`, known only on device.
    in_range = jnp.all((maps >= 0.0) & (maps <= 1.0), axis=(1, 2))
    sums = {
        "count": jnp.sum(ok.astype(jnp.float32)),
        "nan": jnp.sum((valid & ~ok).astype(jnp.float32)),
        "out_of_range": jnp.sum((ok & ~in_range).astype(jnp.float32)),
    }
    sums.update({k: jnp.sum(jnp.where(ok, v, 0.0)) for k, v in per_image.items()})
    if settings.pointing and point_maps is not None:
        sums.update(
            pointing.pointing_sums(
                point_maps, gt_masks, labels, num_classes, valid, finite, settings.tolerance
            )
        )
    return sums


def _check_batch(images, maps, classes, valid, labels, point_maps, gt_masks) -> None:
    """`batch_sums`' one-line errors for what the shapes and dtypes already tell."""
    if getattr(images, "shape", (1,))[0] == 0:
        raise ValueError(
            "batch_sums needs at least one image; got a batch of 0 (pad a short batch and "
            "mark the padding valid=False)."
        )
    _check_maps(images, maps, classes)
    b, h, w = images.shape[:3]
    _check_per_image("valid", valid, (b,), "True for an image, False for padding")
    if point_maps is not None:
        _check_per_image("point_maps", point_maps, (b, h, w), "the GT class's map")
        what = "bool or integer, nonzero on the object"
        _check_per_image("gt_masks", gt_masks, (b, h, w), what, (bool, jnp.integer))
        _check_per_image("labels", labels, (b,), "integer GT class indices", (jnp.integer,))


def _check_maps(images, maps, classes) -> None:
    """Float (B, H, W, C) images, a map at their resolution and a class index for each."""
    check_images(images)
    b, h, w = images.shape[:3]
    _check_per_image("maps", maps, (b, h, w), "an explainer's cams[:, 0] with size='input'")
    _check_per_image("classes", classes, (b,), "integer class indices", (jnp.integer,))


def _check_per_image(name: str, value, shape: tuple[int, ...], what: str, dtypes=()) -> None:
    if not hasattr(value, "dtype") or value.shape != shape:
        raise ValueError(
            f"{name} must be {shape}, one per image ({what}); got {errors.described(value)}."
        )
    if dtypes and not any(jnp.issubdtype(value.dtype, d) for d in dtypes):
        raise TypeError(f"{name} must be {what}; got dtype {value.dtype}.")


@dataclasses.dataclass
class FaithfulnessAccumulator:
    """Sums over a split, kept on device until `summary`; `merge` adds another's."""

    settings: FaithfulnessSettings
    sums: dict[str, Any] = dataclasses.field(default_factory=dict)

    def update(self, batch: dict[str, jax.Array]) -> None:
        if not self.sums:
            self.sums = dict(batch)
        else:
            self.sums = jax.tree.map(jnp.add, self.sums, batch)

    def merge(self, other: FaithfulnessAccumulator) -> None:
        """Adds another's sums, of the same settings (else the means would mix definitions)."""
        if other.settings != self.settings:
            raise ValueError(
                f"cannot merge faithfulness sums of different settings: {self.settings} and "
                f"{other.settings}; accumulate each setting apart."
            )
        if other.sums:
            self.update(other.sums)

    def summary(self) -> dict[str, float]:
        """Means over the counted images. The 'paper' variant reports Average Drop and
        Increase in Confidence in percent, the peers' variants as fractions (as they do);
        Deletion and Insertion AUCs (in [0, 1] with score 'softmax'); the pointing game in
        percent."""
        s = jax.tree.map(lambda x: np.asarray(jax.device_get(x), np.float64), self.sums)
        n = float(s.get("count", 0.0))
        if n == 0:  # the means would read as the best possible scores
            raise ValueError(
                f"no image was scored for faithfulness ({int(s.get('nan', 0))} maps were NaN: "
                "invalid classes, or maps or logits that are not finite); nothing to report."
            )
        if s.get("out_of_range", 0) > 0:
            raise ValueError(
                f"{int(s['out_of_range'])} of {int(n)} maps have values outside [0, 1]; Average "
                "Drop multiplies each image by its map: min-max normalise the maps first (the "
                "explainer's are)."
            )
        scale = 100.0 if self.settings.variant == "paper" else 1.0
        out = {
            "num_images": int(s.get("count", 0)),
            "num_nan_maps": int(s.get("nan", 0)),
            "average_drop": scale * float(s.get("drop", 0.0)) / n,
            "increase_in_confidence": scale * float(s.get("increase", 0.0)) / n,
            "variant": self.settings.variant,
            "score": self.settings.score,
        }
        if "deletion" in s:
            out["deletion_auc"] = float(s["deletion"]) / n
            out["insertion_auc"] = float(s["insertion"]) / n
        if "pointing_hits" in s:
            out.update(pointing.pointing_summary(s))
        return out
