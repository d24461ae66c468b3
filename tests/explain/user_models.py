"""Models a user brings: a plain Flax CNN and a small vision transformer, neither edited for
camjax. The explainers must find their layers by module path alone."""

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx


class SmallCNN(nn.Module):
    """conv-relu x2, a pool, conv-relu, global average pooling, a linear classifier."""

    num_classes: int = 5

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(8, (3, 3), name="conv1")(x))
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = nn.relu(nn.Conv(12, (3, 3), name="conv2")(x))
        x = nn.Conv(16, (3, 3), name="conv3")(x)
        x = nn.relu(x)
        return nn.Dense(self.num_classes, name="classifier")(jnp.mean(x, axis=(1, 2)))


class SideBranch(nn.Module):
    """A CNN with a layer computed but never used ('side') and one that reaches the logits
    through stop_gradient only ('frozen')."""

    @nn.compact
    def __call__(self, x):
        nn.Conv(4, (3, 3), name="side")(x)
        x = nn.relu(nn.Conv(8, (3, 3), name="conv1")(x))
        frozen = nn.Conv(8, (3, 3), name="frozen")(x)
        return nn.Dense(5, name="head")(jax.lax.stop_gradient(frozen).mean((1, 2)) + x.mean((1, 2)))


class Block(nn.Module):
    dim: int
    heads: int

    @nn.compact
    def __call__(self, x):
        y = nn.LayerNorm(name="norm1")(x)
        x = x + nn.MultiHeadDotProductAttention(num_heads=self.heads, name="attn")(y, y)
        y = nn.LayerNorm(name="norm2")(x)
        y = nn.Dense(2 * self.dim, name="fc1")(y)
        return x + nn.Dense(self.dim, name="fc2")(nn.gelu(y))


class TinyViT(nn.Module):
    """Patch embedding, a class token, learned positions, transformer blocks, the class token's
    head: the layout of timm's / big_vision's ViT, scaled down."""

    num_classes: int = 5
    patch: int = 4
    dim: int = 16
    depth: int = 2
    heads: int = 2

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(self.dim, (self.patch, self.patch), strides=self.patch, name="embed")(x)
        b, h, w, d = x.shape
        x = x.reshape(b, h * w, d)
        cls = self.param("cls", nn.initializers.normal(0.02), (1, 1, d))
        x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, d)), x], axis=1)
        x = x + self.param("pos", nn.initializers.normal(0.02), (1, h * w + 1, d))
        for i in range(self.depth):
            x = Block(self.dim, self.heads, name=f"block{i}")(x)
        x = nn.LayerNorm(name="norm")(x)
        return nn.Dense(self.num_classes, name="head")(x[:, 0])


def init(model, size=16, batch=2, seed=0):
    images = jax.random.normal(jax.random.key(seed + 1), (batch, size, size, 3))
    return jax.jit(model.init)(jax.random.key(seed), images), images


class ConvBlock(nn.Module):
    """conv3x3-ReLU, with the (x, carry) -> (x, carry) signature nn.scan needs."""

    @nn.compact
    def __call__(self, x, carry=None):
        return nn.relu(nn.Conv(x.shape[-1], (3, 3), name="conv")(x)), carry


# Built once, as users write them: a transform that caches its trace then replays it (nn.jit),
# which a probe passing its inputs in a closure got wrong.
LIFTED_BLOCKS = {"plain": ConvBlock, "remat": nn.remat(ConvBlock), "jit": nn.jit(ConvBlock)}


class Lifted(nn.Module):
    """A stem, a block under a Flax lifted transform ('plain': none), a linear head: the
    variables of 'plain', 'remat' and 'jit' are the same tree. 'scan' scans two blocks over
    their params, 'scan_all' over every collection (whose outputs come out stacked), 'vmap'
    maps the block over images with its variables broadcast, 'cond' runs it on one branch of
    nn.cond (the identity on the other)."""

    lift: str = "plain"

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(8, (3, 3), name="stem")(x))
        if self.lift in ("scan", "scan_all"):
            axes = {"params": 0} if self.lift == "scan" else {True: 0}
            scan = nn.scan(ConvBlock, variable_axes=axes, split_rngs={"params": True}, length=2)
            x, _ = scan(name="block")(x, None)
        elif self.lift == "vmap":
            vmap = nn.vmap(
                ConvBlock,
                variable_axes={True: None},
                split_rngs={"params": False},
                in_axes=(0, None),
                out_axes=(0, None),
            )
            x = vmap(name="block")(x[:, None], None)[0][:, 0]
        elif self.lift == "cond":
            block = ConvBlock(name="block")
            if self.is_initializing():  # init runs both branches, and the identity has no params
                x, _ = block(x)
            else:
                identity = lambda _, y: (y, None)  # noqa: E731
                x, _ = nn.cond(jnp.mean(x) > -1e9, lambda m, y: m(y), identity, block, x)
        else:
            x, _ = LIFTED_BLOCKS[self.lift](name="block")(x)
        return nn.Dense(5, name="head")(jnp.mean(x, axis=(1, 2)))


@flax.struct.dataclass
class Output:
    """A model output object with a `logits` field, as in Hugging Face's Flax models."""

    logits: jax.Array
    features: jax.Array


class Outputs(nn.Module):
    """SmallCNN's first layers, returning its logits as `form`: 'array', 'mapping', 'object', or
    'features' (no logits at all: the features alone)."""

    form: str = "array"

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(8, (3, 3), name="conv1")(x))
        logits = nn.Dense(5, name="classifier")(jnp.mean(x, axis=(1, 2)))
        return {
            "array": logits,
            "mapping": {"features": x, "logits": logits},
            "object": Output(logits=logits, features=x),
            "features": x,
        }[self.form]


class ThroughMethod(nn.Module):
    """A submodule used through a method other than __call__."""

    @nn.compact
    def __call__(self, x):
        return nn.Dense(5, name="head")(jnp.mean(Features(name="encoder").features(x), (1, 2)))


class Features(nn.Module):
    @nn.compact
    def features(self, x):
        return nn.relu(nn.Conv(4, (3, 3), name="conv")(x))


class Normalized(nn.Module):
    """A convolution wrapped in nn.SpectralNorm ('spectral') or nn.WeightNorm ('weight'),
    which map every variable collection of the module they wrap."""

    norm: str = "spectral"

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(8, (3, 3), name="stem")(x))
        conv = nn.Conv(8, (3, 3), name="conv")
        if self.norm == "spectral":
            x = nn.SpectralNorm(conv, name="normed")(x, update_stats=False)
        else:
            x = nn.WeightNorm(conv, name="normed")(x)
        return nn.Dense(5, name="head")(jnp.mean(nn.relu(x), axis=(1, 2)))


class OwnVmapBug(nn.Module):
    """A model whose own jax.vmap is wrong (out_axes None for a batched output), after init."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(4, (3, 3), name="conv")(x))
        if not self.is_initializing():
            jax.vmap(lambda a: (a, a.sum()), out_axes=(0, None))(x)
        return nn.Dense(5, name="head")(jnp.mean(x, axis=(1, 2)))


class SharedConv(nn.Module):
    """One convolution module applied twice."""

    @nn.compact
    def __call__(self, x):
        conv = nn.Conv(3, (3, 3), name="shared")
        return nn.Dense(5, name="head")(jnp.mean(conv(conv(x)), axis=(1, 2)))


class NNXCNN(nnx.Module):
    """SmallCNN in Flax NNX, module for module (same attribute names, so the same paths)."""

    def __init__(self, rngs: nnx.Rngs, num_classes: int = 5, lift: str = "plain"):
        self.conv1 = nnx.Conv(3, 8, (3, 3), rngs=rngs)
        self.conv2 = nnx.Conv(8, 12, (3, 3), rngs=rngs)
        self.conv3 = nnx.Conv(12, 16, (3, 3), rngs=rngs)
        self.classifier = nnx.Linear(16, num_classes, rngs=rngs)
        self.lift = lift  # 'remat' or 'jit': conv2 and conv3 run under that NNX transform

    def __call__(self, x):
        x = nnx.relu(self.conv1(x))
        x = nnx.max_pool(x, (2, 2), strides=(2, 2))
        return self.classifier(jnp.mean(NNX_BODIES[self.lift](self, x), axis=(1, 2)))


def _body(model: NNXCNN, x):
    return nnx.relu(model.conv3(nnx.relu(model.conv2(x))))


# Transformed once, at import (nnx.jit and nnx.remat cache their traces).
NNX_BODIES = {"plain": _body, "remat": nnx.remat(_body), "jit": nnx.jit(_body)}


def nnx_twin(variables, cls=NNXCNN, **kwargs) -> NNXCNN:
    """An NNXCNN (or subclass `cls`) holding SmallCNN's linen `variables`."""
    model = cls(nnx.Rngs(0), **kwargs)
    state = nnx.state(model)
    nnx.replace_by_pure_dict(state, {k: dict(v) for k, v in variables["params"].items()})
    nnx.update(model, state)
    return model


class NNXBlock(nnx.Module):
    """Block in Flax NNX."""

    def __init__(self, dim: int, heads: int, rngs: nnx.Rngs):
        self.norm1 = nnx.LayerNorm(dim, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(heads, dim, decode=False, rngs=rngs)
        self.norm2 = nnx.LayerNorm(dim, rngs=rngs)
        self.fc1 = nnx.Linear(dim, 2 * dim, rngs=rngs)
        self.fc2 = nnx.Linear(2 * dim, dim, rngs=rngs)

    def __call__(self, x):
        y = self.norm1(x)
        x = x + self.attn(y, y)
        return x + self.fc2(nnx.gelu(self.fc1(self.norm2(x))))


class NNXViT(nnx.Module):
    """TinyViT in Flax NNX; its blocks in an nnx.List ('blocks/0' is TinyViT's 'block0')."""

    def __init__(self, rngs: nnx.Rngs, num_classes=5, patch=4, dim=16, depth=2, heads=2, size=16):
        self.embed = nnx.Conv(3, dim, (patch, patch), strides=patch, rngs=rngs)
        self.cls = nnx.Param(jnp.zeros((1, 1, dim)))
        self.pos = nnx.Param(jnp.zeros((1, (size // patch) ** 2 + 1, dim)))
        self.blocks = nnx.List([NNXBlock(dim, heads, rngs) for _ in range(depth)])
        self.norm = nnx.LayerNorm(dim, rngs=rngs)
        self.head = nnx.Linear(dim, num_classes, rngs=rngs)

    def __call__(self, x):
        x = self.embed(x)
        b, h, w, d = x.shape
        cls = jnp.broadcast_to(self.cls[...], (b, 1, d))
        x = jnp.concatenate([cls, x.reshape(b, h * w, d)], axis=1) + self.pos[...]
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x)[:, 0])


def nnx_vit_twin(variables) -> NNXViT:
    """An NNXViT holding TinyViT's linen `variables`."""
    params = {k: v for k, v in variables["params"].items() if not k.startswith("block")}
    params["blocks"] = {
        int(k[5:]): v for k, v in variables["params"].items() if k.startswith("block")
    }
    model = NNXViT(nnx.Rngs(0))
    state = nnx.state(model)
    nnx.replace_by_pure_dict(state, params)
    nnx.update(model, state)
    return model
