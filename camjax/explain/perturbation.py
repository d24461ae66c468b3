"""The perturbation methods: one forward pass per channel (and per noise sample), chunked.

A layer's activations A (B, h, w, K) of the clean images give K perturbations of each image;
the target's score on each perturbed copy weights its channel, and the map is
ReLU(sum_k w_k A_k). Shapes: maps (B, n, h, w) float32 for n targets per image, or (B, n, H, W)
with `combine='input'`; before the explainer's resize and normalisation.

- Score-CAM (Wang et al., CVPR-W 2020): the copy of channel k is x * M_k, M_k = A_k upsampled
  to the input and min-max normalised; w_k its score.
- SS-CAM (Wang et al., 2020): Score-CAM with each mask plus Gaussian noise N(0, std^2), scores
  averaged over `num_samples` draws.
- IS-CAM (Naidu et al., 2020): Score-CAM with scores averaged over the copies c_i * M_k * x,
  i = 1..N, c_i = sum_{j<=i} j / N (`path='cumulative'`, the paper's formula as TorchCAM reads
  it) or c_i = i / N (`path='linear'`, the straight path from 0 to M_k * x).
- Ablation-CAM (Desai & Ramaswamy, WACV 2020): the copy of channel k is the network with channel
  k of the layer set to `value` (0) (`Probe.logits_from`: the layers that only feed the probed
  one are not run); w_k = (y - y_k) / y, no epsilon (it diverges where y = 0, as in the paper
  and grad-cam).

Where the peers differ from the papers (official Score-CAM code: haofanwang/Score-CAM), the
defaults follow the paper and its code, and options reproduce each peer exactly:

  ======================  ==================  =====================  ====================
  option                  paper (default)     TorchCAM 0.5           pytorch-grad-cam
  ======================  ==================  =====================  ====================
  weights                 'probability'       'channel_softmax'      'channel_softmax'
  normalize_masks         'after' upsampling  'before'               'after'
  align_corners           False               False                  True
  combine                 'input'             'layer'                'layer'
  ======================  ==================  =====================  ====================

weights: 'probability' is w_k = softmax over classes of the copy's logits, at the class (a
constant channel, which has no mask, gets w_k = 0, as the official code skips it); a score
function's value is used as it is. 'channel_softmax' is w = softmax over the K channels of the
scores (raw logits), which the peers use; the clean image's score that TorchCAM subtracts is a
constant in k that the softmax removes (`baseline=True` subtracts it in either mode).
combine: 'layer' sums the low-resolution A_k; 'input' sums the upsampled A_k before the ReLU,
as the official code (computed as the upsampled sum: upsampling is linear). TorchCAM's maps
are at the layer's resolution (explainer `size=None`); grad-cam's are upsampled with
`resize='bilinear'`, and its two min-max steps equal the explainer's one (min-max after a
linear resize that preserves constants is the min-max of the resized min-maxed map).

Memory: every method runs `chunk_size` perturbed copies of every image as one forward pass of
B * chunk_size images (`lax.map` over ceil(count / chunk_size) chunks, count = K, or
num_samples * K for SS-CAM and IS-CAM): one chunk holds B * chunk_size * H * W * C floats of
input (Ablation-CAM: B * chunk_size * h * w * K of activations) plus the network's activations
for that forward, and the scores (B, count, n) are all that is kept between chunks. The peers'
`batch_size` (TorchCAM 32 over all (image, channel) pairs, grad-cam 16 per image) only changes
speed, never the maps.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from camjax import errors
from camjax.explain.gradient import single_layer
from camjax.explain.probe import Probe
from camjax.explain.targets import Target, refuse_softmax_of_one_logit
from camjax.resize import resize_maps

_HIGHEST = jax.lax.Precision.HIGHEST
# Added to (max - min) of a mask, as both peers do (1e-8); the official Score-CAM code has none.
MASK_EPS = 1e-8
WEIGHTS = ("probability", "channel_softmax")


@functools.lru_cache(maxsize=64)
def _align_corners_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) linear interpolation with src = i (n_in - 1) / (n_out - 1) (torch's
    align_corners=True, grad-cam's `UpsamplingBilinear2d`)."""
    src = np.arange(n_out) * ((n_in - 1) / (n_out - 1) if n_out > 1 else 0.0)
    lo = np.clip(np.floor(src).astype(int), 0, n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = src - lo
    m = np.zeros((n_out, n_in))
    np.add.at(m, (np.arange(n_out), lo), 1 - frac)
    np.add.at(m, (np.arange(n_out), hi), frac)
    return m.astype(np.float32)


def upsample(maps: jax.Array, size: tuple[int, int], align_corners: bool = False) -> jax.Array:
    """Bilinear (..., h, w) -> (..., H, W) float32: half-pixel centres (torch align_corners=False,
    OpenCV INTER_LINEAR), or align_corners=True."""
    if tuple(maps.shape[-2:]) == tuple(size) and not align_corners:
        return maps
    if not align_corners:
        return resize_maps(maps, tuple(size), method="bilinear")
    rows = _align_corners_matrix(maps.shape[-2], size[0])
    cols = _align_corners_matrix(maps.shape[-1], size[1])
    return jnp.einsum("Hh,...hw,Ww->...HW", rows, maps, cols, precision=_HIGHEST)


def minmax(x: jax.Array, eps: float = MASK_EPS) -> jax.Array:
    """(x - min) / (max - min + eps) over the last two axes."""
    low = jnp.min(x, axis=(-2, -1), keepdims=True)
    high = jnp.max(x, axis=(-2, -1), keepdims=True)
    return (x - low) / (high - low + eps)


def channel_masks(
    acts: jax.Array, channels: jax.Array, size, normalize: str, align_corners: bool
) -> jax.Array:
    """Score-CAM's masks of `channels` (c,): A (B, h, w, K) -> (B, c, H, W) in [0, 1]."""
    a = jnp.moveaxis(jnp.take(acts, channels, axis=-1), -1, 1)
    if normalize == "before":
        return upsample(minmax(a), size, align_corners)
    if normalize == "after":
        return minmax(upsample(a, size, align_corners))
    raise ValueError(f"normalize_masks must be 'before' or 'after'; got {normalize!r}.")


def chunked(fn: Callable[[jax.Array], jax.Array], count: int, chunk_size: int) -> jax.Array:
    """fn(j) -> (B, c, n) for chunks j (c,) of range(count) -> (B, count, n), one compiled body
    (`lax.map`); the last chunk is padded with repeats of the last index, then cut off."""
    if not errors.is_int_at_least(chunk_size, 1):
        raise ValueError(f"chunk_size must be a positive int; got {chunk_size!r}.")
    chunk = min(chunk_size, count)
    num = -(-count // chunk)
    index = jnp.minimum(jnp.arange(num * chunk, dtype=jnp.int32), count - 1).reshape(num, chunk)
    out = jax.lax.map(fn, index)  # (num, B, chunk, n)
    out = jnp.moveaxis(out, 0, 1)
    return out.reshape(out.shape[0], num * chunk, out.shape[-1])[:, :count]


def _reader(target: Target, classes: jax.Array, weights: str, num_classes: int):
    """Logits (B, c, C) of perturbed copies -> their scores (B, c, n)."""
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {WEIGHTS}; got {weights!r}.")
    if weights == "probability" and target.fn is None:
        refuse_softmax_of_one_logit(
            num_classes,
            "weights='probability' (the default)",
            "pass weights='channel_softmax', or a target function of the logits such as "
            "lambda z: jax.nn.sigmoid(z[:, 0])",
        )

    def read(logits):
        if weights == "probability" and target.fn is None:
            logits = jax.nn.softmax(logits, axis=-1)
        return target.scores(logits, classes)

    return read


def masked_scores(probe: Probe, variables, inputs_of, count: int, chunk_size: int, read):
    """Scores (B, count, n) of the copies inputs_of(j) -> (B, c, H, W, C), chunk by chunk."""

    def scores(j):
        x = inputs_of(j)
        b, c = x.shape[:2]
        logits, _ = probe.run(variables, x.reshape(b * c, *x.shape[2:]))
        return read(logits.reshape(b, c, -1))

    return chunked(scores, count, chunk_size)


def combine_maps(
    acts: jax.Array,
    scores: jax.Array,
    base: jax.Array,
    size,
    *,
    weights: str,
    combine: str,
    baseline: bool,
    align_corners: bool,
) -> jax.Array:
    """ReLU(sum_k w_k A_k) -> (B, n, h, w) ('layer') or (B, n, H, W) ('input') from the scores
    (B, K, n) and the clean images' scores `base` (B, 1, n)."""
    if baseline:
        scores = scores - base
    if weights == "channel_softmax":
        w = jax.nn.softmax(scores, axis=1)
    else:
        alive = jnp.max(acts, axis=(1, 2)) > jnp.min(acts, axis=(1, 2))  # (B, K)
        w = jnp.where(alive[..., None], scores, 0.0)
    maps = jnp.einsum("bhwk,bkn->bnhw", acts, w, precision=_HIGHEST)
    if combine == "input":
        maps = upsample(maps, size, align_corners)
    elif combine != "layer":
        raise ValueError(f"combine must be 'layer' or 'input'; got {combine!r}.")
    return jax.nn.relu(maps)


def _score_family(
    name, probe, variables, images, target, inputs_fn, samples, chunk_size, options
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The shared body of Score-CAM, SS-CAM and IS-CAM. inputs_fn(masks (B, c, H, W), sample
    (c,), channel (c,)) -> copies (B, c, H, W, C); samples: copies per channel, averaged."""
    single_layer(probe, name)
    weights, normalize, align_corners = (
        options["weights"],
        options["normalize_masks"],
        options["align_corners"],
    )
    logits, (acts,) = probe.forward(variables, images)
    classes = target.classes(logits)
    read = _reader(target, classes, weights, logits.shape[-1])
    k = acts.shape[-1]
    size = images.shape[1:3]

    def inputs_of(j):
        sample, channel = j // k, j % k
        masks = channel_masks(acts, channel, size, normalize, align_corners)
        return inputs_fn(masks, sample, channel)

    scores = masked_scores(probe, variables, inputs_of, samples * k, chunk_size, read)
    scores = jnp.mean(scores.reshape(scores.shape[0], samples, k, -1), axis=1)
    maps = combine_maps(
        acts,
        scores,
        read(logits[:, None]),
        size,
        weights=weights,
        combine=options["combine"],
        baseline=options["baseline"],
        align_corners=align_corners,
    )
    return logits, classes, maps


def score_cam(
    probe: Probe,
    variables,
    images,
    target: Target,
    key,
    chunk_size: int = 32,
    weights: str = "probability",
    normalize_masks: str = "after",
    align_corners: bool = False,
    combine: str = "input",
    baseline: bool = False,
):
    """Score-CAM; options in the module docstring. One chunk: B * chunk_size masked images."""
    del key

    def inputs_fn(masks, sample, channel):
        return masks[..., None] * images[:, None]

    options = dict(
        weights=weights,
        normalize_masks=normalize_masks,
        align_corners=align_corners,
        combine=combine,
        baseline=baseline,
    )
    return _score_family(
        "score_cam", probe, variables, images, target, inputs_fn, 1, chunk_size, options
    )


def ss_cam_noise(key, image: jax.Array, sample: jax.Array, channel: jax.Array, size, std):
    """The noise SS-CAM adds to the mask of `channel` in draw `sample` of image `image`: (H, W)
    float32, a function of (key, image, sample, channel) only. For parity tests, the (B, K, H,
    W) noise of draw s is vmap over image and channel of this."""
    k = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(key, image), sample), channel)
    return std * jax.random.normal(k, tuple(size), jnp.float32)


def ss_cam(
    probe: Probe,
    variables,
    images,
    target: Target,
    key,
    num_samples: int = 35,
    std: float = 2.0,
    chunk_size: int = 32,
    weights: str = "probability",
    normalize_masks: str = "after",
    align_corners: bool = False,
    combine: str = "input",
    baseline: bool = False,
):
    """SS-CAM: Score-CAM with noise N(0, std^2) added to each normalised mask (the noise of
    TorchCAM's `SSCAM`, on the upsampled mask, not on the input), scores averaged over
    `num_samples` draws (the paper's and TorchCAM's 35 and 2.0). The noise of image b is
    `ss_cam_noise(key, b, ...)`: it depends on (key, b) only. One chunk: B * chunk_size noisy
    masked images; num_samples * K forward copies per image in all."""
    size = images.shape[1:3]
    images_index = jnp.arange(images.shape[0])

    def inputs_fn(masks, sample, channel):
        noise = jax.vmap(
            lambda b: jax.vmap(lambda s, c: ss_cam_noise(key, b, s, c, size, std))(sample, channel)
        )(images_index)
        return (masks + noise)[..., None] * images[:, None]

    options = dict(
        weights=weights,
        normalize_masks=normalize_masks,
        align_corners=align_corners,
        combine=combine,
        baseline=baseline,
    )
    return _score_family(
        "ss_cam", probe, variables, images, target, inputs_fn, num_samples, chunk_size, options
    )


def is_cam_coefficients(num_samples: int, path: str) -> np.ndarray:
    """(N,) the scale of copy i = 1..N: cumulative sum_{j<=i} j / N, or linear i / N."""
    i = np.arange(1, num_samples + 1)
    if path == "cumulative":
        return np.cumsum(i / num_samples).astype(np.float32)
    if path == "linear":
        return (i / num_samples).astype(np.float32)
    raise ValueError(f"path must be 'cumulative' or 'linear'; got {path!r}.")


def is_cam(
    probe: Probe,
    variables,
    images,
    target: Target,
    key,
    num_samples: int = 10,
    path: str = "cumulative",
    chunk_size: int = 32,
    weights: str = "probability",
    normalize_masks: str = "after",
    align_corners: bool = False,
    combine: str = "input",
    baseline: bool = False,
):
    """IS-CAM: scores of c_i * M_k * x averaged over i = 1..num_samples (TorchCAM's 10);
    c_i from `is_cam_coefficients(num_samples, path)`. One chunk: B * chunk_size images."""
    del key
    coeff = jnp.asarray(is_cam_coefficients(num_samples, path))

    def inputs_fn(masks, sample, channel):
        return (coeff[sample][None, :, None, None] * masks)[..., None] * images[:, None]

    options = dict(
        weights=weights,
        normalize_masks=normalize_masks,
        align_corners=align_corners,
        combine=combine,
        baseline=baseline,
    )
    return _score_family(
        "is_cam", probe, variables, images, target, inputs_fn, num_samples, chunk_size, options
    )


def grad_cam_ablation_value(acts: jax.Array) -> jax.Array:
    """grad-cam's ablation value per image (B,) of A (B, h, w, K): 0 where the activations'
    minimum is 0, else that minimum - 1e7 (its `AblationLayer`, without the row-dependent
    quirk of a minimum re-read after each ablated row)."""
    low = jnp.min(acts, axis=(1, 2, 3))
    return jnp.where(low == 0, 0.0, low - 1e7)


def ablation_cam(
    probe: Probe,
    variables,
    images,
    target: Target,
    key,
    chunk_size: int = 32,
    value: float = 0.0,
    grad_cam_rule: bool = False,
):
    """Ablation-CAM: w_k = (y - y_k) / y, y_k the score with channel k of the layer set to
    `value` (the paper's 0), or with `grad_cam_rule` to `grad_cam_ablation_value`. The
    network runs with the layer's output replaced: what only feeds the layer is dead code, what
    bypasses it (a skip connection) is computed once per chunk. One chunk: B * chunk_size copies
    of the layer's (h, w, K) activations and the rest of the network on them."""
    del key
    single_layer(probe, "ablation_cam")
    logits, (raw,) = probe.run(variables, images)
    # A layer the logits do not depend on would give every channel the weight 0.
    probe.check_layers_reached(
        lambda a: probe.logits_from(variables, images, a), raw, gradient=False
    )
    acts = probe.to_grid(raw, images.shape[1:3])
    classes = target.classes(logits)
    y = target.scores(logits[:, None], classes)  # (B, 1, n)
    b, _, _, k = acts.shape
    if grad_cam_rule:
        value = grad_cam_ablation_value(acts)[None, :, None, None, None]

    def scores(j):
        ablate = jax.nn.one_hot(j, k, dtype=bool)[:, None, None, None, :]
        copies = jnp.where(ablate, value, acts[None])  # (chunk, B, h, w, K)
        # One ablated layer per copy, the images shared: under vmap, what the network computes
        # from the images alone (a skip connection around the layer) runs once per chunk.
        logits = jax.vmap(
            lambda copy: probe.logits_from(variables, images, probe.from_grid(copy, raw))
        )(copies)
        return target.scores(jnp.swapaxes(logits, 0, 1), classes)

    weights = (y - chunked(scores, k, chunk_size)) / y  # (B, K, n)
    maps = jnp.einsum("bhwk,bkn->bnhw", acts, weights, precision=_HIGHEST)
    return logits, classes, jax.nn.relu(maps)
