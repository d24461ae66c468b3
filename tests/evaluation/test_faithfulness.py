"""Tests for camjax/evaluation/faithfulness.py.

Closed forms (an indicator map on an image whose class score is a known function of its
pixels), loop-by-loop numpy references of each published definition (RISE's `CausalMetric`,
TorchCAM's `ClassificationMetric` / `DeletionInsertionMetric`, pytorch-grad-cam's
`DropInConfidence` / `IncreaseInConfidence`, TorchRay's pointing game) on tiny inputs, and,
where torch and the peers import, the peers' own code on the same model, maps and images.
"""

import contextlib
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from camjax.evaluation import faithfulness as fa
from camjax.evaluation import pointing
from tests.explain import user_models
from tests.meshes import on_mesh

H = W = 6
P = H * W
C = 4


def linear_model(seed=0, classes=C):
    """A model whose logits are a known linear function of the pixels: x.flat @ k + b."""
    rng = np.random.default_rng(seed)
    k = rng.normal(size=(P * 3, classes)).astype(np.float32) * 0.3
    b = rng.normal(size=classes).astype(np.float32)

    def forward(x):
        return jnp.asarray(x).reshape(x.shape[0], -1) @ k + b

    def np_forward(x):
        return np.asarray(x, np.float64).reshape(x.shape[0], -1) @ k.astype(np.float64) + b

    return forward, np_forward, k, b


def softmax(z):
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def batch(seed=1, b=3):
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(b, H, W, 3)).astype(np.float32)
    maps = rng.uniform(size=(b, H, W)).astype(np.float32)  # no ties
    classes = rng.integers(0, C, size=b).astype(np.int32)
    return images, maps, classes


# --------------------------------------------------------------------------------------------
# Closed forms.


def mean_red(x):
    """Logit 0 = the mean of the red channel over pixels; logit 1 = 0."""
    red = x[..., 0].reshape(x.shape[0], -1).mean(-1)
    return jnp.stack([red, jnp.zeros_like(red)], -1)


@pytest.mark.parametrize("r,step", [(12, 6), (12, 4), (6, 3)])
def test_deletion_insertion_of_an_indicator_map_in_closed_form(r, step):
    """Image 1 on a region R of r pixels, 0 elsewhere; the map is R's indicator. With the
    logit as score, deletion falls linearly from r/P to 0 over the first r/P of the pixels
    (AUC (r/P)^2 / 2) and insertion from zeros rises to r/P (AUC r/P - (r/P)^2 / 2)."""
    region = np.zeros((1, H, W), bool)
    region.reshape(-1)[np.random.default_rng(r).permutation(P)[:r]] = True
    images = np.where(region[..., None], 1.0, 0.0).astype(np.float32)
    maps = region.astype(np.float32)
    cls = np.zeros(1, np.int32)
    dele, ins = fa.deletion_insertion_curves(
        mean_red, images, maps, cls, step=step, insertion_start=jnp.zeros_like(images),
        score="logit",
    )  # fmt: skip
    counts = fa.curve_counts(P, step)
    np.testing.assert_allclose(dele[0], (r - np.minimum(counts, r)) / P, atol=1e-6)
    np.testing.assert_allclose(ins[0], np.minimum(counts, r) / P, atol=1e-6)
    f = r / P
    np.testing.assert_allclose(fa.curve_auc(dele, P, step), [f * f / 2], atol=1e-6)
    np.testing.assert_allclose(fa.curve_auc(ins, P, step), [f - f * f / 2], atol=1e-6)


def test_average_drop_of_an_indicator_map_in_closed_form():
    """Two classes with logits (s, 0): p = sigmoid(s). Keeping half of a constant image halves s."""
    images = np.full((1, H, W, 3), 4.0, np.float32)
    maps = np.zeros((1, H, W), np.float32)
    maps[:, : H // 2] = 1.0
    y, o = fa.confidence_change(mean_red, images, maps, np.zeros(1, np.int32))
    sig = lambda s: 1 / (1 + np.exp(-s))  # noqa: E731
    np.testing.assert_allclose([y[0], o[0]], [sig(4.0), sig(2.0)], rtol=1e-6)
    drop, inc = fa.drop_and_increase(y, o)
    np.testing.assert_allclose(drop, [(sig(4) - sig(2)) / sig(4)], rtol=1e-5)
    assert inc[0] == 0.0
    # The map of everything changes nothing: no drop, no increase (strict).
    y, o = fa.confidence_change(mean_red, images, np.ones_like(maps), np.zeros(1, np.int32))
    assert fa.drop_and_increase(y, o)[0][0] == 0.0 and fa.drop_and_increase(y, o)[1][0] == 0.0


def test_curve_counts():
    np.testing.assert_array_equal(fa.curve_counts(10, 3), [0, 3, 6, 9, 10])
    np.testing.assert_array_equal(fa.curve_counts(9, 3), [0, 3, 6, 9])
    with pytest.raises(ValueError, match="step"):
        fa.curve_counts(9, 0)


# --------------------------------------------------------------------------------------------
# Numpy references, written from the published code, loop by loop.


def rise_gkern(klen, nsig):
    """RISE's `gkern`, verbatim but for torch: gaussian_filter of a delta."""
    scipy_ndimage = pytest.importorskip("scipy.ndimage")
    inp = np.zeros((klen, klen))
    inp[klen // 2, klen // 2] = 1
    return scipy_ndimage.gaussian_filter(inp, nsig)


def test_gaussian_kernel_is_rises_gkern():
    np.testing.assert_allclose(fa.gaussian_kernel(11, 5), rise_gkern(11, 5), rtol=1e-6)
    np.testing.assert_allclose(fa.gaussian_kernel(5, 1.5), rise_gkern(5, 1.5), rtol=1e-6)


def test_rise_blur_is_a_zero_padded_per_channel_convolution():
    images = batch()[0]
    k = fa.gaussian_kernel(11, 5).astype(np.float64)
    padded = np.pad(images.astype(np.float64), ((0, 0), (5, 5), (5, 5), (0, 0)))
    ref = np.zeros(images.shape)
    for i in range(H):
        for j in range(W):
            ref[:, i, j, :] = np.einsum("bxyc,xy->bc", padded[:, i : i + 11, j : j + 11], k)
    np.testing.assert_allclose(fa.rise_blur(images), ref, rtol=1e-5, atol=1e-6)


def rise_causal_metric(np_forward, img, sal, mode, step, substrate):
    """eclique/RISE evaluation.py CausalMetric.single_run, numpy: softmax scores of the class
    c (top-1 on the original image, as its batch `evaluate`), step pixels per iteration."""
    n_steps = (P + step - 1) // step
    if mode == "del":
        start, finish = img.copy(), substrate.copy()
    else:
        start, finish = substrate.copy(), img.copy()
    c = int(np.argmax(np_forward(img[None])[0]))
    scores = np.empty(n_steps + 1)
    order = np.argsort(-sal.reshape(-1), kind="stable")
    for i in range(n_steps + 1):
        scores[i] = softmax(np_forward(start[None]))[0, c]
        if i < n_steps:
            coords = order[step * i : step * (i + 1)]
            start.reshape(P, 3)[coords] = finish.reshape(P, 3)[coords]
    return c, scores


def rise_auc(arr):
    """RISE's `auc`: the trapezoid rule on a uniform grid over [0, 1]."""
    return (arr.sum() - arr[0] / 2 - arr[-1] / 2) / (arr.shape[0] - 1)


def test_deletion_insertion_equal_rise_on_a_linear_model():
    forward, np_forward, *_ = linear_model()
    images, maps, _ = batch()
    step = W  # RISE's step: the image width
    blurred = np.asarray(fa.rise_blur(images))
    classes = np.argmax(np_forward(images), -1).astype(np.int32)
    dele, ins = fa.deletion_insertion_curves(forward, images, maps, classes, step=step, chunk=3)
    for i in range(len(images)):
        c, ref_del = rise_causal_metric(np_forward, images[i], maps[i], "del", step, 0 * images[i])
        _, ref_ins = rise_causal_metric(np_forward, images[i], maps[i], "ins", step, blurred[i])
        assert c == classes[i]
        np.testing.assert_allclose(dele[i], ref_del, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(ins[i], ref_ins, rtol=1e-4, atol=1e-6)
        aucs = fa.curve_auc(jnp.stack([dele[i], ins[i]]), P, step)
        np.testing.assert_allclose(aucs, [rise_auc(ref_del), rise_auc(ref_ins)], rtol=1e-5)


def torchcam_deletion_insertion(np_forward, images, maps, classes, steps):
    """torchcam/metrics.py DeletionInsertionMetric (zeros baseline, softmax logits_fn), numpy:
    stable descending ranks, step_size = ceil(P / steps), counts [0, s, ..., P], AUC
    `torch.trapezoid(curve, counts / P)`."""
    s = (P + steps - 1) // steps
    counts = [*range(0, P, s), P]
    fr = np.array(counts) / P
    out = []
    for x, m, c in zip(images, maps, classes, strict=True):
        order = np.argsort(-m.reshape(-1), kind="stable")
        ranks = np.argsort(order)
        curves = []
        for insertion in (False, True):
            curve = []
            for n in counts:
                changed = (ranks < n).reshape(H, W, 1)
                keep = changed if insertion else ~changed
                curve.append(softmax(np_forward(np.where(keep, x, 0.0)[None]))[0, c])
            curves.append(np.trapezoid(curve, fr))
        out.append(curves)
    return np.array(out)


@pytest.mark.parametrize("steps", [5, 7, 36])
def test_deletion_insertion_equal_torchcams_formula(steps):
    """Any step, including ones that leave a shorter last interval."""
    forward, np_forward, *_ = linear_model(2)
    images, maps, classes = batch(3)
    s = (P + steps - 1) // steps
    dele, ins = fa.deletion_insertion_curves(
        forward, images, maps, classes, step=s, insertion_start=jnp.zeros_like(images)
    )
    ours = np.stack([fa.curve_auc(dele, P, s), fa.curve_auc(ins, P, s)], -1)
    ref = torchcam_deletion_insertion(np_forward, images, maps, classes, steps)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-7)


def drop_increase_references(y, o):
    """(paper, torchcam, grad_cam) per-image (drop, increase), from the three definitions:
    Chattopadhyay et al. eq. (AD, IC); torchcam/metrics.py ClassificationMetric.update;
    pytorch_grad_cam/metrics/cam_mult_image.py DropInConfidence / IncreaseInConfidence on
    perturbation_confidence.py PerturbationConfidenceMetric's diff o - y."""
    paper = (np.maximum(0, y - o) / y, (y < o).astype(float))
    torchcam = (np.maximum(y - o, 0) / (y + 1e-7), (y < o).astype(float))
    diff = o - y
    grad_cam = (np.maximum(-diff, 0), (diff > 0).astype(float))
    return {"paper": paper, "torchcam": torchcam, "grad_cam": grad_cam}


@pytest.mark.parametrize("score", ["softmax", "logit"])
def test_average_drop_and_increase_equal_the_three_definitions(score):
    forward, np_forward, *_ = linear_model(4)
    images, maps, _ = batch(5, b=8)
    classes = np.concatenate([np.argmax(np_forward(images[:4]), -1), [0, 1, 2, 3]])
    classes = classes.astype(np.int32)  # half top-1 (confidence drops), half any class
    y, o = fa.confidence_change(forward, images, maps, classes, score)
    z, zm = np_forward(images), np_forward(images * maps[..., None])
    if score == "softmax":
        z, zm = softmax(z), softmax(zm)
    ry, ro = z[np.arange(8), classes], zm[np.arange(8), classes]
    np.testing.assert_allclose(y, ry, rtol=1e-5)
    np.testing.assert_allclose(o, ro, rtol=1e-5)
    if score == "softmax":
        assert len(set((ry < ro).tolist())) == 2  # the draw has both outcomes
    refs = drop_increase_references(ry, ro)
    for variant, (rd, ri) in refs.items():
        if score == "logit" and variant != "grad_cam":
            continue  # a relative drop of a logit is meaningless (it can be negative)
        d, i = fa.drop_and_increase(y, o, variant)
        np.testing.assert_allclose(d, rd, rtol=1e-4, atol=1e-6)
        np.testing.assert_array_equal(i, ri)


def test_the_paper_drop_of_an_underflowed_probability_is_zero_and_logits_are_refused():
    """A confidently wrong image: the label's softmax probability underflows float32 to 0, and
    0 / 0 made the whole split's Average Drop NaN. The 'paper' variant divides by a
    probability, so a logit (negative: a negative drop) is refused."""
    y, o = jnp.array([0.0, 0.5]), jnp.array([0.0, 0.25])
    drop, increase = fa.drop_and_increase(y, o, "paper")
    np.testing.assert_array_equal(drop, [0.0, 0.5])
    np.testing.assert_array_equal(increase, [0.0, 0.0])
    with pytest.raises(ValueError, match="variant 'paper' divides by the class's probability"):
        fa.FaithfulnessSettings(variant="paper", score="logit")
    assert fa.FaithfulnessSettings(variant="torchcam", score="logit").score == "logit"


def test_a_summary_of_no_scored_image_is_refused_not_the_best_scores():
    """Every map NaN (or nothing added): the means were reported as 0.0, the best Average Drop
    and Deletion AUC there are."""
    acc = fa.FaithfulnessAccumulator(fa.FaithfulnessSettings())
    acc.update({"count": jnp.zeros(()), "nan": jnp.full((), 3.0), "drop": jnp.zeros(())})
    with pytest.raises(ValueError, match=r"no image was scored for faithfulness \(3 maps were NaN"):
        acc.summary()


@pytest.mark.parametrize("low,high", [(0.0, 1.5), (-0.25, 1.0), (0.0, 1.0)])
def test_maps_outside_zero_one_are_refused_at_the_summary(low, high):
    """Average Drop multiplies the image by its map: raw maps (a Grad-CAM's 0..12) gave numbers
    of no definition, silently. Known only on device, so counted and refused by `summary`;
    a padding row out of range counts nowhere."""
    forward, *_ = linear_model(2)
    images, maps, classes = batch(3, b=4)
    maps = low + (high - low) * (maps - maps.min()) / (maps.max() - maps.min())
    maps[3] = 7.0  # padding: valid False
    settings = fa.FaithfulnessSettings(step=8, pointing=False)
    acc = fa.FaithfulnessAccumulator(settings)
    acc.update(jax.jit(lambda *a: fa.batch_sums(forward, *a, settings))(
        images, maps, classes, np.arange(4) < 3
    ))  # fmt: skip
    if (low, high) == (0.0, 1.0):
        assert acc.summary()["num_images"] == 3
        return
    with pytest.raises(ValueError, match=r"^3 of 3 maps have values outside \[0, 1\]; .* min-max"):
        acc.summary()


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("chunk", 1.5, "chunk must be an int >= 1; got 1.5"),
        ("chunk", 0, "chunk must be an int >= 1; got 0"),
        ("step", 2.5, "step must be an int >= 0; got 2.5"),
        ("step", True, "step must be an int >= 0; got True"),
        ("tolerance", float("nan"), "tolerance must be a finite number of pixels > 0"),
        ("tolerance", float("inf"), "tolerance must be a finite number of pixels > 0"),
        ("tolerance", -1.0, "tolerance must be a finite number of pixels > 0"),
        ("tolerance", 0.0, "tolerance must be a finite number of pixels > 0"),
        ("tolerance", True, "tolerance must be a finite number of pixels > 0; got True"),
    ],
)
def test_settings_refuse_fractional_counts_and_a_tolerance_that_is_not_finite(
    field, value, message
):
    """chunk=1.5 failed deep in lax.map, step=2.5 gave curves at fractional pixel counts, and a
    NaN tolerance made every pointing hit a miss."""
    with pytest.raises(ValueError, match=message):
        fa.FaithfulnessSettings(**{field: value})
    assert fa.FaithfulnessSettings(step=np.int64(4), chunk=2, tolerance=15).tolerance == 15


def torchray_pointing(maps, masks, labels, num_classes, tolerance=15):
    """TorchRay benchmark/pointing_game.py: first argmax, distance strictly < tolerance,
    per-class hits / max(1, hits + misses), then the mean (over the classes present here)."""
    hits, misses = np.zeros(num_classes), np.zeros(num_classes)
    for m, g, c in zip(maps, masks, labels, strict=True):
        idx = int(np.argmax(m))
        y, x = idx // m.shape[1], idx % m.shape[1]
        hit = False
        for yy in range(m.shape[0]):
            for xx in range(m.shape[1]):
                if g[yy, xx] and (yy - y) ** 2 + (xx - x) ** 2 < tolerance**2:
                    hit = True
        hits[c] += hit
        misses[c] += not hit
    seen = hits + misses > 0
    return 100 * np.mean(hits[seen] / np.maximum(hits + misses, 1)[seen]), hits


def test_pointing_game_equals_torchray_and_its_tolerance_is_strict():
    rng = np.random.default_rng(7)
    maps = rng.uniform(size=(20, 12, 12)).astype(np.float32)
    masks = np.zeros((20, 12, 12), bool)
    for i in range(20):
        y0, x0 = rng.integers(0, 12, 2)
        masks[i, y0 : y0 + 2, x0 : x0 + 3] = True
    labels = rng.integers(0, 3, 20)
    hits = pointing.pointing_hits(maps, masks, tolerance=3.0)
    ref, ref_hits = torchray_pointing(maps, masks, labels, 3, tolerance=3.0)
    assert 0 < hits.sum() < 20
    sums = {
        "count": jnp.ones(20),
        "pointing_hits": jax.nn.one_hot(labels, 3) * hits[:, None],
        "pointing_count": jax.nn.one_hot(labels, 3),
    }
    acc = fa.FaithfulnessAccumulator(fa.FaithfulnessSettings())
    acc.update(jax.tree.map(lambda x: x.sum(0), sums))
    assert acc.summary()["pointing_game"] == pytest.approx(ref)
    # A GT pixel at distance exactly 15 misses; at 14.x hits.
    m = np.zeros((1, 40, 40), np.float32)
    m[0, 5, 5] = 1
    g = np.zeros((1, 40, 40), bool)
    g[0, 5, 20] = True
    assert not pointing.pointing_hits(m, g)[0]
    g[0, 5, 20], g[0, 14, 16] = False, True  # 9^2 + 11^2 = 202 < 225
    assert pointing.pointing_hits(m, g)[0]


def test_pointing_game_on_non_square_maps_reads_the_maximums_row_and_column():
    """The first maximum's raster index is row * W + column: on a non-square map, dividing it by
    H put the point elsewhere, which square maps (the other tests') cannot tell apart. Half the
    GT pixels sit on the maximum, half at random; hits must equal TorchRay's per image."""
    rng = np.random.default_rng(3)
    maps = rng.uniform(size=(30, 5, 11)).astype(np.float32)
    masks = np.zeros((30, 5, 11), bool)
    for i, m in enumerate(maps):
        y, x = np.unravel_index(np.argmax(m), m.shape) if i < 15 else rng.integers(0, (5, 11))
        masks[i, y, x] = True
    hits = np.asarray(pointing.pointing_hits(maps, masks, tolerance=1.5))
    _, ref = torchray_pointing(maps, masks, np.arange(30), 30, tolerance=1.5)  # one class each
    assert 15 <= ref.sum() < 30
    np.testing.assert_array_equal(hits, ref.astype(bool))


def test_the_pointing_game_is_the_mean_over_the_classes_that_occur():
    """Per class hits / images, then the mean over the classes that have images (TorchRay's
    mean over all classes, when all occur): class 0 hits 1 of 1, class 1 1 of 3, class 2 has
    no image, so (1 + 1/3) / 2, neither the pooled 2 / 4 nor a 0% for class 2's (1 + 1/3) / 3
    (a split's first images cover few of its classes)."""
    acc = fa.FaithfulnessAccumulator(fa.FaithfulnessSettings())
    acc.update(
        {
            "count": jnp.float32(4.0),
            "pointing_hits": jnp.float32([1, 1, 0]),
            "pointing_count": jnp.float32([1, 3, 0]),
        }
    )
    assert acc.summary()["pointing_game"] == pytest.approx(100 * (1 + 1 / 3) / 2)


def test_box_masks_cover_pixel_centres_of_each_real_box():
    boxes = np.array([[[1, 2, 4, 3], [0, 0, 6, 6]]], np.float32)  # x0, y0, x1, y1, exclusive
    m = np.asarray(pointing.box_masks(boxes, np.array([1]), 5, 6))
    ref = np.zeros((5, 6), bool)
    ref[2:3, 1:4] = True
    np.testing.assert_array_equal(m[0], ref)
    # Edges through pixel centres (x 1.5 and 3.5, y 0.5 and 2.5): the half-covered pixels are
    # kept at both ends, columns 1-3 and rows 0-2; edges a hair inside drop them.
    boxes = np.array([[[1.5, 0.5, 3.5, 2.5]], [[1.51, 0.51, 3.49, 2.49]]], np.float32)
    m = np.asarray(pointing.box_masks(boxes, np.array([1, 1]), 5, 6))
    ref = np.zeros((2, 5, 6), bool)
    ref[0, 0:3, 1:4] = True
    ref[1, 1:2, 2:3] = True
    np.testing.assert_array_equal(m, ref)


# --------------------------------------------------------------------------------------------
# Streaming.


def test_batch_sums_stream_merge_mask_padding_and_nan_maps():
    forward, *_ = linear_model(6)
    images, maps, classes = batch(8, b=6)
    settings = fa.FaithfulnessSettings(step=4, chunk=3, pointing=False)
    # Jitted, as the evaluator calls it (op by op it took seconds to dispatch).
    sums = jax.jit(lambda *arrays: fa.batch_sums(forward, *arrays, settings))
    valid = np.ones(6, bool)
    whole = fa.FaithfulnessAccumulator(settings)
    whole.update(sums(images, maps, classes, valid))
    # Two halves merged; the second padded with a garbage row and a NaN map.
    a, b = fa.FaithfulnessAccumulator(settings), fa.FaithfulnessAccumulator(settings)
    a.update(sums(images[:3], maps[:3], classes[:3], valid[:3]))
    pad = lambda x, v: np.concatenate([x[3:], np.full_like(x[:2], v)])  # noqa: E731
    nan_maps = pad(maps, 0.5)
    nan_maps[-1] = np.nan
    b.update(sums(pad(images, 9), nan_maps, pad(classes, 0), np.arange(5) != 3))
    a.merge(b)
    s, t = a.summary(), whole.summary()
    assert s["num_images"] == 6 and s["num_nan_maps"] == 1
    for k in ("average_drop", "increase_in_confidence", "deletion_auc", "insertion_auc"):
        assert s[k] == pytest.approx(t[k], rel=1e-5)
    y, o = np.asarray(fa.confidence_change(forward, images, maps, classes))
    assert t["average_drop"] == pytest.approx(100 * np.mean(np.maximum(y - o, 0) / y), rel=1e-5)
    # The peers' variants report fractions, as the peers do; only the paper's is in percent.
    peers = fa.FaithfulnessSettings(step=4, chunk=3, pointing=False, variant="torchcam")
    torchcam = fa.FaithfulnessAccumulator(peers)
    torchcam.update(
        jax.jit(lambda *a: fa.batch_sums(forward, *a, peers))(images, maps, classes, valid)
    )
    drop = np.mean(np.maximum(y - o, 0) / (y + 1e-7))
    assert torchcam.summary()["average_drop"] == pytest.approx(drop, rel=1e-5)


def test_batch_sums_excludes_and_counts_what_is_not_finite_or_out_of_range():
    """A NaN or Inf pixel, an Inf map, a class outside [0, C) (-1 read class C-1, C gave NaN)
    and a pointing label outside [0, C) each made the split's means NaN or wrong, counted
    nowhere: each such image is now left out and counted, the others' sums unchanged."""
    forward, *_ = linear_model(6)
    images, maps, classes = batch(8, b=6)
    settings = fa.FaithfulnessSettings(step=4, chunk=3, tolerance=2.0)
    masks = np.zeros((6, H, W), bool)
    masks[:, 1:3, 1:3] = True

    @functools.cache  # one compiled step per model
    def step(model):
        return jax.jit(lambda images, maps, classes, labels: fa.batch_sums(
            model, images, maps, classes, np.ones(6, bool), settings,
            point_maps=maps, gt_masks=masks, labels=labels, num_classes=C,
        ))  # fmt: skip

    def sums(*args, model=forward):
        return {k: np.asarray(v) for k, v in step(model)(*args).items()}

    clean = sums(images, maps, classes, classes)
    bad_images, bad_maps = images.copy(), maps.copy()
    bad_images[0, 0, 0, 0], bad_images[1, 2, 3, 1], bad_maps[2, 1, 1] = np.nan, np.inf, np.inf
    bad_classes = classes.copy()
    bad_classes[3], bad_classes[4] = -1, C
    labels = classes.copy()
    labels[5] = C
    got = sums(bad_images, bad_maps, bad_classes, labels)
    assert got["count"] == 1 and got["nan"] == 5 and got["pointing_nan"] == 4

    # A network that swallows NaN and Inf (a max or a ReLU can) leaves the same images out.
    def swallowing(x):
        return forward(jnp.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0))

    swallowed = sums(bad_images, bad_maps, bad_classes, labels, model=swallowing)
    assert swallowed["count"] == 1 and swallowed["nan"] == 5
    only_5 = sums(
        images[5:].repeat(6, 0), maps[5:].repeat(6, 0), classes[5:].repeat(6), classes[5:].repeat(6)
    )
    for k in ("drop", "increase", "deletion", "insertion"):
        assert np.isfinite(got[k]) and got[k] == pytest.approx(only_5[k] / 6, rel=1e-5, abs=1e-7)
    np.testing.assert_array_equal(got["pointing_count"], np.bincount(classes[3:5], minlength=C))
    # Hits only of the counted images: a left-out image's zeroed map points at (0, 0), within
    # 2 px of the GT square, and must not add a hit its count lacks.
    _, ref_hits = torchray_pointing(maps[3:5], masks[3:5], labels[3:5], C, tolerance=2.0)
    np.testing.assert_array_equal(got["pointing_hits"], ref_hits)
    assert clean["count"] == 6 and clean["nan"] == 0 and clean["pointing_nan"] == 0
    acc = fa.FaithfulnessAccumulator(settings)
    acc.update(got)
    assert acc.summary()["num_nan_maps"] == 5 and acc.summary()["pointing_num_nan_maps"] == 4
    with pytest.raises(ValueError, match="batch_sums needs at least one image; got a batch of 0"):
        fa.batch_sums(forward, images[:0], maps[:0], classes[:0], np.ones(0, bool), settings)
    with pytest.raises(TypeError, match="classes must be integer class indices"):
        fa.batch_sums(forward, images, maps, classes.astype(np.float32), np.ones(6, bool), settings)


def test_batch_sums_compile_once_per_shape():
    forward, *_ = linear_model(9)
    settings = fa.FaithfulnessSettings(step=6)
    traces = []

    @jax.jit
    def step(images, maps, classes, valid):
        traces.append(1)
        return fa.batch_sums(forward, images, maps, classes, valid, settings)

    for seed in (1, 2, 3):
        images, maps, classes = batch(seed)
        step(images, maps, classes, np.ones(3, bool))
    assert len(traces) == 1


# --------------------------------------------------------------------------------------------
# The peers' own code, where torch and the peers import (optional test dependencies).


def torch_twin(k, b):
    torch = pytest.importorskip("torch")

    class Linear(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.k = torch.tensor(k, dtype=torch.float64)
            self.b = torch.tensor(b, dtype=torch.float64)

        def forward(self, x):  # NCHW -> the JAX model's NHWC raster order
            return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1) @ self.k + self.b

    return torch, Linear().eval()


class FixedCams:
    """A TorchCAM extractor stand-in that returns given maps (the metric is what is tested)."""

    def __init__(self, model, cams):
        self.model, self.cams = model, cams

    def __call__(self, class_idx=None, scores=None, normalized=True, **kwargs):
        return [self.cams]

    def fuse_cams(self, cams):
        return cams[0]

    @contextlib.contextmanager
    def _hooks_off(self):
        yield


def test_parity_with_torchcam_metrics():
    pytest.importorskip("torchcam")
    from torchcam.metrics import ClassificationMetric, DeletionInsertionMetric

    forward, np_forward, k, b = linear_model(10)
    torch, model = torch_twin(k, b)
    images, maps, classes = batch(11, b=5)
    x = torch.tensor(images, dtype=torch.float64).permute(0, 3, 1, 2)
    cams = torch.tensor(maps, dtype=torch.float64)
    sm = functools.partial(torch.softmax, dim=-1)
    ref = ClassificationMetric(FixedCams(model, cams), sm)
    ref.update(x, class_idx=classes.tolist())
    ref = ref.summary()
    y, o = fa.confidence_change(forward, images, maps, classes)
    d, i = fa.drop_and_increase(y, o, "torchcam")
    assert float(d.mean()) == pytest.approx(ref["avg_drop"], rel=1e-4)
    assert float(i.mean()) == pytest.approx(ref["conf_increase"])
    steps = 7
    ref = DeletionInsertionMetric(FixedCams(model, cams), sm, steps=steps)
    ref.update(x, class_idx=classes.tolist())
    ref = ref.summary()
    s = (P + steps - 1) // steps
    dele, ins = fa.deletion_insertion_curves(
        forward, images, maps, classes, step=s, insertion_start=jnp.zeros_like(images)
    )
    assert float(fa.curve_auc(dele, P, s).mean()) == pytest.approx(ref["deletion_auc"], rel=1e-4)
    assert float(fa.curve_auc(ins, P, s).mean()) == pytest.approx(ref["insertion_auc"], rel=1e-4)


def test_parity_with_pytorch_grad_cam_confidence_metrics():
    pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.metrics.cam_mult_image import DropInConfidence, IncreaseInConfidence
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    forward, np_forward, k, b = linear_model(12)
    torch, model = torch_twin(k, b)
    images, maps, classes = batch(13, b=6)
    x = torch.tensor(images, dtype=torch.float64).permute(0, 3, 1, 2)
    targets = [ClassifierOutputSoftmaxTarget(int(c)) for c in classes]
    ref_d = DropInConfidence()(x, maps.astype(np.float64), targets, model)
    ref_i = IncreaseInConfidence()(x, maps.astype(np.float64), targets, model)
    y, o = fa.confidence_change(forward, images, maps, classes)
    d, i = fa.drop_and_increase(y, o, "grad_cam")
    np.testing.assert_allclose(d, ref_d, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(i, ref_i)


def test_batch_sums_of_a_batch_sharded_on_a_mesh_with_explicit_axes():
    """jax.make_mesh's default axes raised a ShardingTypeError where the curves' chunks of
    images went through a Flax convolution; the sums now run with those axes Auto and equal
    the unsharded batch's (up to the order of the sum)."""
    model = user_models.SmallCNN(num_classes=C)
    variables, _ = user_models.init(model, size=H)
    forward = functools.partial(model.apply, variables)
    images, maps, classes = batch(8, b=8)
    masks = np.zeros((8, H, W), bool)
    masks[:, 1:3, 1:3] = True
    settings = fa.FaithfulnessSettings(step=4, chunk=3, tolerance=2.0)

    @jax.jit
    def step(images, maps, classes, valid, masks):
        return fa.batch_sums(
            forward, images, maps, classes, valid, settings,
            point_maps=maps, gt_masks=masks, labels=classes, num_classes=C,
        )  # fmt: skip

    arrays = (images, maps, classes, np.ones(8, bool), masks)
    want = step(*arrays)
    got = step(*(on_mesh(x)[0] for x in arrays))
    assert got.keys() == want.keys()
    # Sums of 8 per-image values: Average Drop's ratios in [0, 1] round with the sum's order
    # (2.7e-7 apart on py3.12 with an AVX-512 CPU, 1.6e-7 on py3.11); the rest agree exactly.
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-6, atol=1e-6, err_msg=k)


def test_ties_and_tiny_scores_follow_the_peers_conventions():
    """Where random data never lands. Increase in Confidence counts strictly more confidence in
    every variant (TorchCAM's y < o, grad-cam's o - y > 0): a saturated probability, 1.0 on
    both inputs, is no increase. TorchCAM's drop divides by y + 1e-7. Saliency ties rank in
    raster order (TorchCAM's stable argsort), and the pointing game takes the first maximum."""
    y = jnp.float32([1.0, 0.3, 0.0, 1e-6])
    o = jnp.float32([1.0, 0.3, 0.0, 0.0])
    for variant in fa.DROP_VARIANTS:
        np.testing.assert_array_equal(fa.drop_and_increase(y, o, variant)[1], 0.0)
    drop, _ = fa.drop_and_increase(y, o, "torchcam")
    np.testing.assert_allclose(drop, [0.0, 0.0, 0.0, 1e-6 / (1e-6 + 1e-7)], rtol=1e-6)
    np.testing.assert_array_equal(fa.saliency_ranks(jnp.zeros((1, 2, 3))), [[0, 1, 2, 3, 4, 5]])
    np.testing.assert_array_equal(fa.saliency_ranks(jnp.float32([[[1, 0, 1]]])), [[0, 2, 1]])
    maps = jnp.zeros((2, 40, 40)).at[:, 5, 5].set(1.0).at[:, 35, 35].set(1.0)
    gt = jnp.zeros((2, 40, 40), bool).at[0, 5, 5].set(True).at[1, 35, 35].set(True)
    np.testing.assert_array_equal(pointing.pointing_hits(maps, gt), [True, False])


def test_the_default_step_is_one_image_width_as_rise():
    """step=0 deletes or inserts one image width of pixels per step (RISE's 224 at 224 x 224):
    9 on a non-square 4 x 9 image, not its height, nor one pixel less."""
    forward, *_ = linear_model()  # 4 x 9 = P pixels, as the model's 6 x 6
    rng = np.random.default_rng(2)
    images = rng.normal(size=(2, 4, 9, 3)).astype(np.float32)
    maps = rng.uniform(size=(2, 4, 9)).astype(np.float32)
    classes = np.array([0, 3], np.int32)
    settings = fa.FaithfulnessSettings(pointing=False)
    sums = jax.jit(lambda *a: fa.batch_sums(forward, *a, settings))(
        images, maps, classes, np.ones(2, bool)
    )
    curves = jax.jit(lambda *a: fa.deletion_insertion_curves(forward, *a, step=9))
    deletion, insertion = curves(images, maps, classes)
    for name, curve in (("deletion", deletion), ("insertion", insertion)):
        want = float(jnp.sum(fa.curve_auc(curve, P, 9)))
        assert float(sums[name]) == pytest.approx(want, rel=1e-6), name
    assert deletion.shape == (2, 5)  # 0, 9, 18, 27 and 36 pixels changed


def test_inputs_that_do_not_fit_the_images_are_one_line_errors_before_any_work():
    """Maps of one image for two were broadcast to both (every metric plausible); uint8 images
    truncated every map value below 1 to 0; the rest failed deep in jax's broadcasting."""
    forward, *_ = linear_model()
    settings = fa.FaithfulnessSettings(step=6)
    images, maps, classes = batch(b=2)
    valid = np.ones(2, bool)
    labels, masks = classes, maps > 0.5
    cases = [
        (dict(maps=maps[:1]), r"maps must be \(2, 6, 6\), one per image .*of shape \(1, 6, 6\)"),
        (dict(maps=maps[:, None]), r"maps must be \(2, 6, 6\).*got an array of shape \(2, 1, 6"),
        (dict(maps=maps[:, ::2, ::2]), r"maps must be \(2, 6, 6\).*got an array of shape \(2, 3,"),
        (dict(images=(images * 50).astype(np.uint8)), "images must be floating point"),
        (dict(classes=list(classes)), r"classes must be \(2,\), one per image .*; got a list"),
        (dict(classes=classes[:, None]), r"classes must be \(2,\).*got an array of shape \(2, 1\)"),
        (dict(valid=np.ones(3, bool)), r"valid must be \(2,\).*got an array of shape \(3,\)"),
        (dict(point_maps=maps, labels=labels), r"gt_masks must be \(2, 6, 6\).*got a NoneType"),
        (dict(point_maps=maps, gt_masks=masks), r"labels must be \(2,\).*got a NoneType"),
        (dict(point_maps=maps[:, :2], gt_masks=masks, labels=labels), r"point_maps must be"),
    ]
    for change, message in cases:
        args = dict(images=images, maps=maps, classes=classes, valid=valid) | change
        pointing_args = {k: args.pop(k) for k in ("point_maps", "gt_masks", "labels") if k in args}
        with pytest.raises(ValueError, match=message):
            fa.batch_sums(forward, **args, settings=settings, num_classes=C, **pointing_args)
    with pytest.raises(TypeError, match="gt_masks must be bool or integer, nonzero on the obj"):
        fa.batch_sums(
            forward, images, maps, classes, valid, settings,
            point_maps=maps, gt_masks=masks.astype(np.float32), labels=labels, num_classes=C,
        )  # fmt: skip
    with pytest.raises(TypeError, match="^labels must be integer GT class indices; got dtype f"):
        fa.batch_sums(
            forward, images, maps, classes, valid, settings,
            point_maps=maps, gt_masks=masks, labels=labels.astype(np.float32), num_classes=C,
        )  # fmt: skip
    # Integer masks (0/1, 0/255, any nonzero) are the bool ones: nonzero is the object.
    sums = [
        fa.batch_sums(
            forward, images, maps, classes, valid, settings,
            point_maps=maps, gt_masks=m, labels=labels, num_classes=C,
        )["pointing_hits"]
        for m in (masks, masks.astype(np.uint8) * 2)  # even: a bitwise & with True missed it
    ]  # fmt: skip
    np.testing.assert_array_equal(*sums)
    # The metric functions themselves check as batch_sums does.
    with pytest.raises(ValueError, match="images must be floating point"):
        fa.confidence_change(forward, (images * 50).astype(np.uint8), maps, classes)
    with pytest.raises(ValueError, match=r"maps must be \(2, 6, 6\)"):
        fa.deletion_insertion_curves(forward, images, maps[:1], classes, step=6)
    # FaithfulnessSettings checks these; a direct call took 2.5 pixels per step and chunk 0.
    with pytest.raises(ValueError, match="step must be a positive int, pixels per step; got 2.5"):
        fa.deletion_insertion_curves(forward, images, maps, classes, step=2.5)
    with pytest.raises(ValueError, match="chunk must be a positive int, curve points"):
        fa.deletion_insertion_curves(forward, images, maps, classes, step=6, chunk=0)


def test_sums_of_different_settings_are_not_merged():
    """A 'paper' accumulator took a 'grad_cam' one's sums: the summary mixed the definitions
    under the first's name."""
    acc = fa.FaithfulnessAccumulator(fa.FaithfulnessSettings())
    other = fa.FaithfulnessAccumulator(fa.FaithfulnessSettings(variant="grad_cam", score="logit"))
    other.update({"count": jnp.ones(()), "nan": jnp.zeros(()), "drop": jnp.ones(())})
    with pytest.raises(ValueError, match="cannot merge faithfulness sums of different settings"):
        acc.merge(other)
    same = fa.FaithfulnessAccumulator(fa.FaithfulnessSettings())
    same.update({"count": jnp.ones(()), "nan": jnp.zeros(()), "drop": jnp.ones(())})
    acc.merge(same)
    assert acc.summary()["average_drop"] == 100.0


def test_a_pointing_game_of_no_counted_image_is_nan_not_zero():
    """Every label out of range (or every GT-class map not finite): 0.0 read as the worst
    score a method can get; NaN, beside the count that says why."""
    summary = pointing.pointing_summary(
        {"pointing_hits": np.zeros(3), "pointing_count": np.zeros(3), "pointing_nan": 4.0}
    )
    assert np.isnan(summary["pointing_game"]) and summary["pointing_num_nan_maps"] == 4
    counted = {"pointing_hits": np.array([1.0, 0, 0]), "pointing_count": np.array([2.0, 0, 1])}
    # (1/2 + 0/1) / 2, and no uncounted map: sums without 'pointing_nan' counted none.
    assert pointing.pointing_summary(counted) == {"pointing_game": 25.0, "pointing_num_nan_maps": 0}
    # No class to count an image in: refused, not a NaN game of (0,) per-class arrays.
    maps, masks, ones = np.zeros((1, 4, 4), np.float32), np.ones((1, 4, 4), bool), np.ones(1, bool)
    with pytest.raises(ValueError, match=r"^the pointing game needs num_classes >= 1; got 0\.$"):
        pointing.pointing_sums(maps, masks, np.zeros(1, np.int32), 0, ones, ones, 15.0)
