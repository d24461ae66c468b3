"""Methods that read activations only: CAM (with the classifier's weights) and Eigen-CAM.

- CAM (Zhou et al., CVPR 2016): sum_k w_ck A_k, for a network whose probed layer feeds global
  average pooling and a linear classifier (`head`: the Dense layer's module path). No ReLU:
  the paper's map, signed, as `camjax.cam`.
- Eigen-CAM (Muhammad & Yeasin, IJCNN 2020): the projection of each position's activation
  vector on the first right singular vector of the image's (h w, K) activations, then ReLU:
  the paper's O V_1 of the uncentred matrix. `center=True` subtracts the positions' mean first
  (a principal component in the statistical sense), which is what pytorch-grad-cam 1.5.7
  computes. Class-agnostic: every target of an image gets the same map. The
  singular vector's sign is arbitrary; camjax orients it so that the projection's product with
  the channel sum of the activations (the unsigned "how active" map; centred with `center`) is
  positive, which makes the map deterministic across SVD implementations; where that sum is at
  rounding level (a LayerNorm with equal scales), its largest entry is positive. The principal
  component comes from plain matrix products (`top_eigenvector`), not a LAPACK call: see
  there why.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from camjax.explain.probe import Probe
from camjax.explain.targets import Target

_HIGHEST = jax.lax.Precision.HIGHEST


def classifier_kernel(variables: Mapping[str, Any], head: str) -> jax.Array:
    """The (K, C) kernel of the Dense (linen) or Linear (NNX) layer at module path `head`
    (e.g. 'head', 'fc'), from linen variables or an NNX state."""
    if isinstance(variables, nnx.State):
        node = variables.to_pure_dict()
    else:
        node = variables.get("params", {})
    for name in head.split("/"):
        if not isinstance(node, Mapping):
            break
        # An NNX state keys list items by their int index; a path names them by its digits.
        node = node.get(int(name) if name.isdigit() and int(name) in node else name, {})
    kernel = node.get("kernel") if isinstance(node, Mapping) else None
    if kernel is None or kernel.ndim != 2:
        raise ValueError(
            f"CAM needs the linear classifier after global average pooling: there is no Dense "
            f"or Linear kernel at module path {head!r}; pass head='PATH' of the classifier."
        )
    return kernel


def cam_map(acts: jax.Array, kernel: jax.Array, classes: jax.Array) -> jax.Array:
    """CAMs (B, n, h, w) of classes (B, n) from A (B, h, w, K) and the head kernel (K, C)."""
    weights = jnp.take(
        kernel.astype(jnp.float32).T, jnp.clip(classes, 0, kernel.shape[1] - 1), axis=0
    )
    return jnp.einsum("bhwk,bnk->bnhw", acts, weights, precision=_HIGHEST)


def cam(probe: Probe, variables, images, target: Target, key, head: str = "head"):
    """CAM of the probed layer (camjax's networks: 'feature_map') with the classifier at `head`."""
    del key
    kernel = classifier_kernel(variables, head)
    logits, (acts,) = probe.forward(variables, images)
    if acts.shape[-1] != kernel.shape[0]:
        raise ValueError(
            f"CAM's layer has {acts.shape[-1]} channels but the classifier {head!r} takes "
            f"{kernel.shape[0]}; probe the layer that feeds its global average pooling."
        )
    if target.fn is not None:
        raise ValueError("CAM weights classes; pass classes or top_k, not a score function.")
    classes = target.classes(logits)
    return logits, classes, cam_map(acts, kernel, classes)


# G -> G^(2^24): eigenvalues below (1 - 1e-6) of the largest vanish past float32's precision;
# closer ones leave the top eigenvector undetermined in float32 anyway (eigh's own error is
# about eps * lambda_1 / gap).
_SQUARINGS = 24


def top_eigenvector(gram: jax.Array) -> jax.Array:
    """gram (n, n) float32, symmetric positive semi-definite -> (n,) a unit eigenvector of its
    largest eigenvalue (sign arbitrary; zeros for the zero matrix).

    Repeated squaring, not `jnp.linalg.eigh`: jaxlib 0.10's CPU eigh (LAPACK syevd) splits a
    batch of matrices over XLA's intra-op thread pool and blocks its own pool thread until the
    pieces are done, so when as many device programs as the pool has threads reach it at once
    (the evaluator's step on 8 forced CPU devices and 2 cores) every thread waits and the
    program hangs. Matrix products partition over the batch like the rest of the program, and
    were 8x faster than eigh on 4 x 196 x 196 on the 2-core CPU (equal to 4e-7 in cosine).
    """
    tiny = jnp.finfo(gram.dtype).tiny

    def square(m, _):
        m = jnp.matmul(m, m, precision=_HIGHEST)
        # A PSD matrix's largest entry is on its diagonal, and it is 1 after this scaling, so
        # the next square's diagonal is >= 1: nothing overflows or underflows to zero.
        return m / jnp.maximum(jnp.max(jnp.abs(m)), tiny), None

    m0 = gram / jnp.maximum(jnp.max(jnp.abs(gram)), tiny)
    m, _ = jax.lax.scan(square, m0, None, length=_SQUARINGS)
    # m is proportional to v v^T: its column at v's largest entry is v up to scale and sign.
    column = m[:, jnp.argmax(jnp.diagonal(m))]
    return column / jnp.maximum(jnp.sqrt(jnp.sum(column * column)), tiny)


def principal_projection(x: jax.Array, center: bool = False) -> jax.Array:
    """x (h, w, K) -> (h, w): each position's projection on the first right singular vector of
    the positions' K-vectors (centred over positions first with `center`), oriented so that
    its product with x's channel sum (centred too with `center`) is positive, or, where that
    sum is at rounding level, its largest entry."""
    h, w, k = x.shape
    flat = x.reshape(h * w, k)
    centred = flat - jnp.mean(flat, axis=0) if center else flat
    # The projection on the first right singular vector v is sigma u: from the top eigenvector
    # of the smaller Gram matrix (h w x h w, or K x K) rather than an SVD of the (h w, K) matrix.
    if h * w <= k:
        gram = jnp.matmul(centred, centred.T, precision=_HIGHEST)
        u = top_eigenvector(gram)
        sigma_squared = jnp.dot(u, jnp.matmul(gram, u, precision=_HIGHEST), precision=_HIGHEST)
        projection = u * jnp.sqrt(jnp.maximum(sigma_squared, 0.0))
    else:
        gram = jnp.matmul(centred.T, centred, precision=_HIGHEST)
        projection = jnp.matmul(centred, top_eigenvector(gram), precision=_HIGHEST)
    # The sign follows the channel sum (how active each position is), centred like the
    # projection: uncentred, a post-ReLU layer's projection has one sign everywhere, and
    # correlating it with a centred sum could flip it to all <= 0, an all-zero map after ReLU.
    activity = jnp.sum(flat, axis=1)
    activity = activity - jnp.mean(activity) if center else activity
    agreement = jnp.sum(projection * activity)
    # A channel sum at rounding level decides nothing (a LayerNorm with equal scales, as
    # initialised, outputs ~0 channel sums at every position: at a vision transformer's norm1
    # the sign flipped with a 1e-6 change of the image). |agreement| <= |projection| sqrt(K)
    # |centred| (Cauchy-Schwarz); below 1e-4 of that bound, the largest entry is made positive
    # instead (the convention of scikit-learn's svd_flip).
    bound = jnp.sqrt(jnp.sum(projection**2) * k * jnp.sum(centred**2))
    largest = projection[jnp.argmax(jnp.abs(projection))]
    decisive = jnp.abs(agreement) > 1e-4 * bound
    sign = jnp.where(jnp.where(decisive, agreement, largest) < 0, -1.0, 1.0)
    return (sign * projection).reshape(h, w)


def eigen_cam(probe: Probe, variables, images, target: Target, key, center: bool = False):
    """Eigen-CAM: the same class-agnostic map for every target of an image (`center`: see the
    module docstring)."""
    del key
    logits, (acts,) = probe.forward(variables, images)
    classes = target.classes(logits)
    maps = jax.nn.relu(jax.vmap(lambda a: principal_projection(a, center))(acts))
    return logits, classes, jnp.broadcast_to(maps[:, None], (*classes.shape, *maps.shape[1:]))
