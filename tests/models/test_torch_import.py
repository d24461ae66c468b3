"""Tests for camjax/models/torch_import.py: torchvision state_dicts -> camjax variables.

The torch reference networks below have torchvision's module names and hyperparameters (so
their state_dicts have its keys and shapes) and random weights: there are no downloads. Each
is saved as a .pth, imported, and run beside the camjax model in eval mode on 64x64 inputs.
"""

import functools
import logging
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from camjax.models import create_model
from camjax.models import torch_import as ti
from camjax.models.layers import scaled_width

torch = pytest.importorskip("torch")
tnn = torch.nn

SIZE = 64


# ---- torch references in torchvision's layout --------------------------------------------------

# torchvision's vgg16 `features` (cfg "D"): channel counts and "M" for the max pools.
VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class TorchVGG16(tnn.Module):
    def __init__(self):
        super().__init__()
        layers, cin = [], 3
        for v in VGG16_CFG:
            if v == "M":
                layers.append(tnn.MaxPool2d(2, 2))
            else:
                layers += [tnn.Conv2d(cin, v, 3, padding=1), tnn.ReLU()]
                cin = v
        self.features = tnn.Sequential(*layers)
        # fc6-fc8 have the real keys but toy sizes: the importer drops them whatever their shape.
        self.classifier = tnn.Sequential(
            tnn.Linear(8, 8), tnn.ReLU(), tnn.Dropout(), tnn.Linear(8, 8), tnn.ReLU(),
            tnn.Dropout(), tnn.Linear(8, 4),
        )  # fmt: skip


class TorchBasicConv2d(tnn.Module):
    def __init__(self, cin, cout, **kwargs):
        super().__init__()
        self.conv = tnn.Conv2d(cin, cout, bias=False, **kwargs)
        self.bn = tnn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)))


class TorchInception(tnn.Module):
    def __init__(self, cin, c1, r3, c3, r5, c5, cp):
        super().__init__()
        self.branch1 = TorchBasicConv2d(cin, c1, kernel_size=1)
        self.branch2 = tnn.Sequential(
            TorchBasicConv2d(cin, r3, kernel_size=1),
            TorchBasicConv2d(r3, c3, kernel_size=3, padding=1),
        )
        self.branch3 = tnn.Sequential(  # 3x3, as torchvision (pytorch/vision issue 906)
            TorchBasicConv2d(cin, r5, kernel_size=1),
            TorchBasicConv2d(r5, c5, kernel_size=3, padding=1),
        )
        self.branch4 = tnn.Sequential(
            tnn.MaxPool2d(3, stride=1, padding=1, ceil_mode=True),
            TorchBasicConv2d(cin, cp, kernel_size=1),
        )

    def forward(self, x):
        branches = (self.branch1, self.branch2, self.branch3, self.branch4)
        return torch.cat([b(x) for b in branches], 1)


class TorchInceptionAux(tnn.Module):
    def __init__(self, cin, num_classes):
        super().__init__()
        self.conv = TorchBasicConv2d(cin, 128, kernel_size=1)
        self.fc1 = tnn.Linear(2048, 1024)
        self.fc2 = tnn.Linear(1024, num_classes)


GOOGLENET_INCEPTIONS = {
    "inception3a": (192, 64, 96, 128, 16, 32, 32),
    "inception3b": (256, 128, 128, 192, 32, 96, 64),
    "inception4a": (480, 192, 96, 208, 16, 48, 64),
    "inception4b": (512, 160, 112, 224, 24, 64, 64),
    "inception4c": (512, 128, 128, 256, 24, 64, 64),
    "inception4d": (512, 112, 144, 288, 32, 64, 64),
    "inception4e": (528, 256, 160, 320, 32, 128, 128),
    "inception5a": (832, 256, 160, 320, 32, 128, 128),
    "inception5b": (832, 384, 192, 384, 48, 128, 128),
}


class TorchGoogLeNet(tnn.Module):
    """torchvision's googlenet with aux heads (its ImageNet file has their keys too). At a
    `width` below 1, camjax's scaled channel counts (`scaled_width`) and no aux heads: the
    trunk of TorchGoogLeNetGAPBN."""

    def __init__(self, width=1.0):
        super().__init__()
        c = functools.partial(scaled_width, width=width)
        self.conv1 = TorchBasicConv2d(3, c(64), kernel_size=7, stride=2, padding=3)
        self.maxpool1 = tnn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.conv2 = TorchBasicConv2d(c(64), c(64), kernel_size=1)
        self.conv3 = TorchBasicConv2d(c(64), c(192), kernel_size=3, padding=1)
        self.maxpool2 = tnn.MaxPool2d(3, stride=2, ceil_mode=True)
        cin = c(192)
        for name, (_, *spec) in GOOGLENET_INCEPTIONS.items():
            c1, r3, c3, r5, c5, cp = (c(n) for n in spec)
            setattr(self, name, TorchInception(cin, c1, r3, c3, r5, c5, cp))
            cin = c1 + c3 + c5 + cp
            if name == "inception4e":
                self.out_channels = cin  # of `features`
        self.maxpool3 = tnn.MaxPool2d(3, stride=2, ceil_mode=True)
        if width == 1:
            self.aux1 = TorchInceptionAux(512, 1000)
            self.aux2 = TorchInceptionAux(528, 1000)
            self.fc = tnn.Linear(1024, 1000)

    def features(self, x, transform_input=True):
        """Through inception4e, after torchvision's transform_input (camjax's option)."""
        if transform_input:
            mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
            x = (x * std[:, None, None] + mean[:, None, None] - 0.5) / 0.5
        x = self.maxpool1(self.conv1(x))
        x = self.maxpool2(self.conv3(self.conv2(x)))
        x = self.maxpool3(self.inception3b(self.inception3a(x)))
        for name in ("inception4a", "inception4b", "inception4c", "inception4d", "inception4e"):
            x = getattr(self, name)(x)
        return x


class TorchGoogLeNetGAPBN(tnn.Module):
    """camjax's GoogLeNetGAPBN (transform_input off) in PyTorch: torchvision's trunk through
    inception4e (TorchGoogLeNet, at camjax's width), CAM_conv with groups, a ReLU module at
    the feature map (where the peers hook), GAP, and the linear head as `fc`."""

    def __init__(self, width: float, num_classes: int, groups: int = 2):
        super().__init__()
        self.trunk = TorchGoogLeNet(width)
        features = scaled_width(1024, width, groups)
        self.cam_conv = tnn.Conv2d(self.trunk.out_channels, features, 3, padding=1, groups=groups)
        self.feature_map = tnn.ReLU()
        self.fc = tnn.Linear(features, num_classes)

    def features(self, x):  # what `randomize` calibrates the batch statistics on
        return self.trunk.features(x, transform_input=False)

    def forward(self, x):
        return self.fc(self.feature_map(self.cam_conv(self.features(x))).mean((2, 3)))


class TorchBottleneck(tnn.Module):
    def __init__(self, cin, planes, stride, downsample):
        super().__init__()
        self.conv1 = tnn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(planes)
        self.conv2 = tnn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = tnn.BatchNorm2d(planes)
        self.conv3 = tnn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = tnn.BatchNorm2d(planes * 4)
        self.downsample = None
        if downsample:
            self.downsample = tnn.Sequential(
                tnn.Conv2d(cin, planes * 4, 1, stride=stride, bias=False),
                tnn.BatchNorm2d(planes * 4),
            )

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return torch.relu(y + (x if self.downsample is None else self.downsample(x)))


class TorchResNet50(tnn.Module):
    """torchvision's resnet50 (v1.5) with per-stage strides (wsolevaluation: layer4 stride 1)."""

    def __init__(self, width=1.0, strides=(1, 2, 2, 1), num_classes=1000):
        super().__init__()
        stem = scaled_width(64, width)  # camjax's rounding, so any width converts
        self.conv1 = tnn.Conv2d(3, stem, 7, stride=2, padding=3, bias=False)
        self.bn1 = tnn.BatchNorm2d(stem)
        self.maxpool = tnn.MaxPool2d(3, stride=2, padding=1)
        cin = stem
        for i, (blocks, planes, stride) in enumerate(
            zip((3, 4, 6, 3), (64, 128, 256, 512), strides, strict=True)
        ):
            planes = scaled_width(planes, width)
            layer = []
            for j in range(blocks):
                s = stride if j == 0 else 1
                layer.append(TorchBottleneck(cin, planes, s, s != 1 or cin != planes * 4))
                cin = planes * 4
            setattr(self, f"layer{i + 1}", tnn.Sequential(*layer))
        self.fc = tnn.Linear(cin, num_classes)

    def features(self, x):
        x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


class TorchCamHead(tnn.Module):
    """The GAP networks' new layers: CAM_conv 3x3/1024 groups 2 + ReLU, GAP, fc."""

    def __init__(self, cin, num_classes):
        super().__init__()
        self.cam_conv = tnn.Conv2d(cin, 1024, 3, padding=1, groups=2)
        self.fc = tnn.Linear(1024, num_classes)

    def forward(self, x):
        return self.fc(torch.relu(self.cam_conv(x)).mean((2, 3)))


def randomize(module: tnn.Module, calibration: torch.Tensor | None, seed: int) -> tnn.Module:
    """He-normal convs, batch-norm running stats of a calibration batch, random BN affine,
    linear layers drawn again (torch's default init): every weight from `seed`.

    Running stats measured on data keep every layer's activations O(1) in eval mode, so the
    comparison exercises the whole network rather than a saturated or constant one.
    """
    torch.manual_seed(seed)
    for m in module.modules():
        if isinstance(m, tnn.Conv2d):
            tnn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                tnn.init.normal_(m.bias, std=0.1)
        elif isinstance(m, tnn.Linear):  # drawn at construction from torch's unseeded state
            m.reset_parameters()
        elif isinstance(m, tnn.BatchNorm2d):
            m.momentum = None  # cumulative average: one batch sets the running stats
    if calibration is not None:
        module.train()
        with torch.no_grad():
            module.features(calibration)
    for m in module.modules():
        if isinstance(m, tnn.BatchNorm2d):
            m.momentum = 0.1
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.1)
    return module.eval()


def calibrated_state_dict(twin: tnn.Module, size: int) -> dict[str, np.ndarray]:
    """`randomize`s `twin` in place, its batch-norm statistics those of 4 random images of
    `size` px, and returns its state_dict as numpy arrays for `ti.convert_state_dict`: the
    weights tests/explain's parity tests and benchmarks/explain_throughput.py share."""
    calibration = np.random.default_rng(11).standard_normal((4, 3, size, size), np.float32)
    randomize(twin, torch.from_numpy(calibration), seed=3)
    return {k: v.detach().numpy() for k, v in twin.state_dict().items()}


def nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def nhwc(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy().transpose(0, 2, 3, 1)


def assert_close(ours, ref, tol=2e-5):
    """Equal to float32 accuracy: max error relative to the reference's largest magnitude."""
    ours, ref = np.asarray(ours), np.asarray(ref)
    assert ours.shape == ref.shape
    scale = np.abs(ref).max()
    assert scale > 0
    err = np.abs(ours - ref).max() / scale
    assert err < tol, f"max relative error {err:.2e}"


def images(seed=0, n=2):
    return np.random.default_rng(seed).normal(size=(n, SIZE, SIZE, 3)).astype(np.float32)


def fresh_variables(model):
    """A real initialisation ('rbg' keys compile several times faster than the default)."""
    x = jnp.zeros((1, SIZE, SIZE, 3))
    return jax.jit(lambda: model.init(jax.random.key(0, impl="rbg"), x))()


def placeholder_variables(model):
    """Zeros of the right shapes: for models whose every leaf is then imported or copied."""
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), ti.abstract_variables(model))


def run(model, variables, x, capture=None):
    """(logits, outputs, captured output of the submodule named `capture`) in eval mode."""
    filt = (lambda m, _: m.name == capture) if capture else False

    @jax.jit
    def f(v, x):
        (logits, out), state = model.apply(v, x, capture_intermediates=filt, mutable=True)
        return logits, out, state.get("intermediates", {})

    logits, out, inter = f(variables, x)
    captured = inter[capture]["__call__"][0] if capture else None
    return logits, out, captured


def copy_cam_head(variables, head: TorchCamHead):
    params = dict(variables["params"])
    w = head.cam_conv.weight.detach().numpy()
    params["cam_conv"] = {
        "kernel": jnp.asarray(w.transpose(2, 3, 1, 0)),
        "bias": jnp.asarray(head.cam_conv.bias.detach().numpy()),
    }
    params["head"] = {
        "kernel": jnp.asarray(head.fc.weight.detach().numpy().T),
        "bias": jnp.asarray(head.fc.bias.detach().numpy()),
    }
    return {**variables, "params": params}


def save_pth(module, path) -> str:
    torch.save(module.state_dict(), path)
    return str(path)


@pytest.fixture(scope="module")
def vgg(tmp_path_factory):
    ref = randomize(TorchVGG16(), None, seed=1)
    return ref, save_pth(ref, tmp_path_factory.mktemp("vgg") / "vgg16.pth")


@pytest.fixture(scope="module")
def googlenet(tmp_path_factory):
    ref = randomize(TorchGoogLeNet(), nchw(images(seed=5, n=4)), seed=2)
    return ref, save_pth(ref, tmp_path_factory.mktemp("googlenet") / "googlenet.pth")


@pytest.fixture(scope="module")
def resnet50(tmp_path_factory):
    ref = randomize(TorchResNet50(), nchw(images(seed=6, n=4)), seed=3)
    return ref, save_pth(ref, tmp_path_factory.mktemp("resnet") / "resnet50.pth")


# ---- numerical equality with torch ---------------------------------------------------------------


def test_vgg16_gap_features_and_logits_match_torch(vgg):
    ref, path = vgg
    model = create_model("vgg16_gap", num_classes=10)
    fresh = fresh_variables(model)
    imported = ti.convert_state_dict(ti.load_torch_state_dict(path), model)
    assert set(imported) == {"params"}
    assert set(imported["params"]) == set(ti.VGG16_FEATURE_INDICES)  # not cam_conv nor head
    variables = ti.merge_pretrained(fresh, imported)
    for layer in ("cam_conv", "head"):  # the new layers keep their fresh initialisation
        jax.tree.map(
            np.testing.assert_array_equal, variables["params"][layer], fresh["params"][layer]
        )

    x = images()
    torch.manual_seed(4)
    head = TorchCamHead(512, 10)
    logits, out, conv5_3 = run(model, copy_cam_head(variables, head), x, capture="conv5_3")
    with torch.no_grad():
        ref_conv5_3 = ref.features[:29](nchw(x))  # through conv5_3, before its ReLU
        ref_logits = head(ref.features[:30](nchw(x)))  # pool5 (features.30) removed
    assert_close(conv5_3, nhwc(ref_conv5_3))
    assert out["feature_map"].shape == (2, SIZE // 16, SIZE // 16, 1024)
    assert_close(logits, ref_logits.numpy())


@pytest.mark.slow  # seconds of compiles; the fast lane imports VGG16-GAP and ResNet50-CAM (BN)
def test_googlenet_gap_bn_features_and_logits_match_torch(googlenet):
    ref, path = googlenet
    model = create_model("googlenet_gap_bn", num_classes=10, transform_input=True)
    state_dict = ti.load_torch_state_dict(path)
    assert any(k.startswith("aux1.") for k in state_dict)  # dropped layers are allowed
    imported = ti.convert_state_dict(state_dict, model)
    assert "inception5a" not in imported["params"] and "cam_conv" not in imported["params"]
    variables = ti.merge_pretrained(placeholder_variables(model), imported)
    np.testing.assert_array_equal(
        variables["batch_stats"]["inception4e"]["branch3_1"]["bn"]["var"],
        ref.inception4e.branch3[1].bn.running_var.numpy(),
    )

    x = images(seed=1)
    torch.manual_seed(5)
    head = TorchCamHead(832, 10)
    logits, _, features = run(model, copy_cam_head(variables, head), x, capture="inception4e")
    with torch.no_grad():
        ref_features = ref.features(nchw(x))
        ref_logits = head(ref_features)
    assert features.shape == (2, 4, 4, 832)
    assert_close(features, nhwc(ref_features))
    assert_close(logits, ref_logits.numpy())


def test_googlenet_gap_bn_is_torchvision_googlenet_through_inception4e(googlenet):
    ref, _ = googlenet
    model = create_model("googlenet_gap_bn")
    variables = ti.abstract_variables(model, image_size=224)
    dropped = ("inception5a", "inception5b", "aux1", "aux2", "fc")
    torch_count = sum(
        p.numel() for name, m in ref.named_children() if name not in dropped for p in m.parameters()
    )
    ours = {k: v for k, v in variables["params"].items() if k not in ("cam_conv", "head")}
    assert sum(x.size for x in jax.tree.leaves(ours)) == torch_count
    _, out = jax.eval_shape(lambda v, x: model.apply(v, x), variables, jnp.zeros((1, 224, 224, 3)))
    assert out["feature_map"].shape == (1, 14, 14, 1024)  # 224 -> 112 -> 56 -> 28 -> 14


def test_resnet50_cam_features_and_logits_match_torch(resnet50):
    ref, path = resnet50
    model = create_model("resnet50_cam")
    state_dict = ti.load_torch_state_dict(path)
    fresh = placeholder_variables(model)
    backbone = ti.convert_state_dict(state_dict, model)
    assert "head" not in backbone["params"]  # fc is dropped by default
    with_head = ti.convert_state_dict(state_dict, model, include_head=True)
    variables = ti.merge_pretrained(fresh, with_head)
    assert len(jax.tree.leaves(with_head)) == len(jax.tree.leaves(fresh))  # everything imported

    x = images(seed=2)
    logits, out, _ = run(model, variables, x)
    with torch.no_grad():
        ref_features = ref.features(nchw(x))
        ref_logits = ref(nchw(x))
    assert out["feature_map"].shape == (2, 4, 4, 2048)  # layer4 at stride 1: 64 / 16
    assert_close(out["feature_map"], nhwc(ref_features))
    assert_close(logits, ref_logits.numpy())


# ---- checkpoint files and the command line -----------------------------------------------------


def test_cli_writes_an_orbax_checkpoint_that_merges_into_fresh_variables(vgg, tmp_path, capsys):
    _, path = vgg
    out = tmp_path / "pretrained" / "vgg16"
    ti.main(["--model", "vgg16_gap", "--checkpoint", path, "--out", str(out)])
    assert str(out) in capsys.readouterr().out
    assert sorted(os.listdir(out.parent)) == ["vgg16"]  # no temporary directory left behind
    loaded, meta = ti.load_pretrained(str(out))
    assert meta["model"] == "vgg16_gap" and meta["architecture"] == "VGG16GAP"
    assert meta["source"] == "vgg16.pth" and meta["imported"] == {"params": 26}

    model = create_model("vgg16_gap", num_classes=10)
    fresh = fresh_variables(model)
    merged = ti.init_from_pretrained(fresh, str(out))
    expected = ti.merge_pretrained(
        fresh, ti.convert_state_dict(ti.load_torch_state_dict(path), model)
    )
    jax.tree.map(np.testing.assert_array_equal, merged, expected)
    # Merged leaves keep the fresh leaves' placement.
    assert (
        merged["params"]["conv1_1"]["kernel"].sharding
        == fresh["params"]["conv1_1"]["kernel"].sharding
    )

    with pytest.raises(SystemExit, match="exists; remove it"):
        ti.main(["--model", "vgg16_gap", "--checkpoint", path, "--out", str(out)])
    with pytest.raises(SystemExit, match="use googlenet_gap_bn"):
        ti.main(["--model", "googlenet_gap", "--checkpoint", path, "--out", str(out) + "2"])
    with pytest.raises(SystemExit, match=r"error: flag --checkpoint=None: .*usage"):
        ti.main(["--model", "vgg16_gap", "--out", str(out) + "3"])


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_cli_help_prints_the_usage_and_every_flag(flag, tmp_path, capsys):
    """--help as absl.app's entry points have it (the flags are in their own FlagValues): the
    usage and each flag's help, and nothing imported or written."""
    out = tmp_path / "never"
    ti.main(["--model", "vgg16_gap", "--out", str(out), flag])
    printed = capsys.readouterr().out
    assert printed.startswith(f"usage: {ti.PROG} --model NAME --checkpoint FILE --out DIR")
    for name in ("--model", "--checkpoint", "--out", "--[no]include_head"):
        assert f"{name}: " in printed
    assert not out.exists()
    # As a flag's value, "-h" is that value (absl parses it so): the import runs, and fails.
    with pytest.raises(SystemExit, match="-h"):
        ti.main(["--model", "vgg16_gap", "--out", str(out), "--checkpoint", "-h"])


def test_cli_include_head_imports_fc_as_the_head(tmp_path):
    """--include_head reaches the conversion (fc becomes the head, its weight transposed) and
    is recorded in the checkpoint's description. Default torch initialisation: no comparison
    of outputs here, only where each tensor lands."""
    torch.manual_seed(0)
    ref = TorchResNet50(width=0.0625)  # resnet50_cam_tiny's widths, torchvision's 1000 classes
    path = save_pth(ref, tmp_path / "resnet50_tiny.pth")
    out = str(tmp_path / "with_head")
    ti.main(["--model", "resnet50_cam_tiny", "--checkpoint", path, "--out", out, "--include_head"])
    loaded, meta = ti.load_pretrained(out)
    assert meta["include_head"] is True and meta["imported"] == {"params": 161, "batch_stats": 106}
    head = loaded["params"]["head"]
    np.testing.assert_array_equal(head["kernel"], ref.fc.weight.detach().numpy().T)
    np.testing.assert_array_equal(head["bias"], ref.fc.bias.detach().numpy())


def test_merged_leaves_keep_a_replicated_leafs_sharding():
    """Merging into a train state replicated over the 8 devices keeps each pretrained leaf
    replicated (a leaf on one device would be moved, or refused, at the first sharded step),
    with the pretrained values; a leaf not in `pretrained` is the fresh one."""
    mesh = jax.make_mesh((8,), ("data",))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    fresh = {
        "params": {
            "conv": {
                "kernel": jax.device_put(jnp.zeros((3, 3, 2, 4)), replicated),
                "bias": jax.device_put(jnp.ones(4), replicated),
            }
        }
    }
    kernel = np.arange(72, dtype=np.float32).reshape(3, 3, 2, 4)
    merged = ti.merge_pretrained(fresh, {"params": {"conv": {"kernel": kernel}}})
    assert merged["params"]["conv"]["kernel"].sharding == replicated
    np.testing.assert_array_equal(merged["params"]["conv"]["kernel"], kernel)
    assert merged["params"]["conv"]["bias"] is fresh["params"]["conv"]["bias"]


def test_save_is_all_or_nothing(tmp_path):
    out = tmp_path / "ckpt"
    with pytest.raises(TypeError):  # meta must be JSON: checked before anything is written
        ti.save_pretrained(str(out), {"params": {"a": np.zeros(2)}}, {"bad": {1, 2}})
    assert not out.exists()
    with pytest.raises(FileNotFoundError, match="torch_import"):
        ti.load_pretrained(str(out))


# ---- errors --------------------------------------------------------------------------------------


def test_missing_and_unexpected_keys_are_listed(vgg):
    state_dict = ti.load_torch_state_dict(vgg[1])
    state_dict["features.29.weight"] = state_dict.pop("features.28.weight")
    del state_dict["features.0.bias"]
    with pytest.raises(ti.TorchImportError) as e:
        ti.convert_state_dict(state_dict, create_model("vgg16_gap"))
    msg = str(e.value)
    assert "2 keys missing: features.0.bias, features.28.weight" in msg
    assert "1 unexpected keys: features.29.weight" in msg


def test_extra_keys_alone_are_an_error(resnet50):
    """A checkpoint with every key the model needs and more (ResNet-101's: ResNet-50's keys and
    shapes, and 17 more blocks in layer3, here one) is another architecture: its extra tensors
    are listed though nothing is missing."""
    state_dict = ti.load_torch_state_dict(resnet50[1])
    block = {k: v for k, v in state_dict.items() if k.startswith("layer3.5.")}
    state_dict.update({k.replace("layer3.5.", "layer3.6."): v for k, v in block.items()})
    with pytest.raises(ti.TorchImportError, match=r"layout for ResNet50CAM: 18 unexpected keys: "):
        ti.convert_state_dict(state_dict, create_model("resnet50_cam"))


def test_a_checkpoint_of_another_architecture_is_rejected(vgg):
    with pytest.raises(ti.TorchImportError, match=r"265 keys missing: bn1\.weight, bn1\.bias"):
        ti.convert_state_dict(ti.load_torch_state_dict(vgg[1]), create_model("resnet50_cam"))


def test_width_mismatch_names_the_key_and_both_shapes(resnet50):
    with pytest.raises(ti.TorchImportError) as e:
        ti.convert_state_dict(
            ti.load_torch_state_dict(resnet50[1]), create_model("resnet50_cam_tiny")
        )
    msg = str(e.value)
    assert "conv1.weight: checkpoint (64, 3, 7, 7), model conv1/kernel (4, 3, 7, 7) (OIHW)" in msg
    assert "bn1.running_mean: checkpoint (64,), model bn1/mean (4,)" in msg
    assert "width=0.0625" in msg
    # A linear weight (fc, with include_head) is named in torch's (out, in) layout, not OIHW.
    ref = TorchResNet50(width=0.0625, num_classes=10)
    state_dict = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
    with pytest.raises(ti.TorchImportError) as e:
        ti.convert_state_dict(state_dict, create_model("resnet50_cam_tiny"), include_head=True)
    assert str(e.value).startswith(
        "2 torchvision tensors do not fit ResNet50CAM (width=0.0625): fc.weight: checkpoint "
        "(10, 128), model head/kernel (1000, 128), fc.bias: checkpoint (10,), model head/bias "
        "(1000,). Build"
    )


def test_num_batches_tracked_is_optional(resnet50):
    state_dict = ti.load_torch_state_dict(resnet50[1])
    old = {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
    assert len(old) < len(state_dict)
    model = create_model("resnet50_cam")
    a, b = ti.convert_state_dict(old, model), ti.convert_state_dict(state_dict, model)
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_unsupported_models_and_head_import_are_errors():
    sd = {"features.0.weight": np.zeros((64, 3, 3, 3))}
    with pytest.raises(ti.TorchImportError, match="use googlenet_gap_bn"):
        ti.convert_state_dict(sd, create_model("googlenet_gap"))
    with pytest.raises(ti.TorchImportError, match="include_head is for resnet50_cam only"):
        ti.convert_state_dict(sd, create_model("vgg16_gap"), include_head=True)


def test_merge_rejects_unknown_paths_and_shapes():
    model = create_model("vgg16_gap_tiny", num_classes=3)
    fresh = fresh_variables(model)
    with pytest.raises(
        ValueError, match=r"conv1_1/kernel: pretrained \(3, 3, 3, 64\), model \(3, 3, 3, 4\)"
    ):
        ti.merge_pretrained(fresh, {"params": {"conv1_1": {"kernel": np.zeros((3, 3, 3, 64))}}})
    with pytest.raises(ValueError, match="batch_stats/bn1/mean is not in the model"):
        ti.merge_pretrained(fresh, {"batch_stats": {"bn1": {"mean": np.zeros(4)}}})


def test_not_a_state_dict_is_an_error(tmp_path):
    path = str(tmp_path / "model.pth")
    torch.save({"epoch": 3, "state_dict": {}}, path)
    with pytest.raises(ti.TorchImportError, match="not a state_dict"):
        ti.load_torch_state_dict(path)


@pytest.mark.parametrize("kind", ["truncated", "whole_module", "text"])
def test_unreadable_checkpoints_are_one_line_errors(vgg, tmp_path, kind):
    path = tmp_path / f"{kind}.pth"
    if kind == "truncated":
        data = open(vgg[1], "rb").read()
        path.write_bytes(data[: len(data) // 2])
        match = r"not a readable torch checkpoint .*truncated or not a \.pth file"
    elif kind == "whole_module":
        torch.save(torch.nn.Linear(2, 2), path)
        match = r"holds pickled Python objects \(a whole model\?\).*model.state_dict\(\)"
    else:
        path.write_text("these are not weights\n")
        match = r"not a readable torch checkpoint"
    with pytest.raises(ti.TorchImportError, match=match) as err:
        ti.load_torch_state_dict(str(path))
    assert "\n" not in str(err.value)
    with pytest.raises(SystemExit, match=r"^error: "):
        ti.main(["--model", "vgg16_gap", "--checkpoint", str(path), "--out", str(tmp_path / "o")])


def test_dataparallel_prefixes_are_stripped(vgg, tmp_path, caplog):
    wrapped = {f"module.{k}": v for k, v in torch.load(vgg[1], weights_only=True).items()}
    path = str(tmp_path / "dp.pth")
    torch.save(wrapped, path)
    with caplog.at_level(logging.INFO, logger="camjax"):
        got = ti.load_torch_state_dict(path)
    assert "stripped the 'module.' prefix" in caplog.text
    want = ti.load_torch_state_dict(vgg[1])
    assert got.keys() == want.keys()
    jax.tree.map(np.testing.assert_array_equal, got, want)


def test_a_missing_checkpoint_file_is_file_not_found(tmp_path):
    """A path with no file is FileNotFoundError, not "truncated or not a .pth file"."""
    path = str(tmp_path / "absent.pth")
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        ti.load_torch_state_dict(path)
    with pytest.raises(SystemExit, match=r"^error: .*No such file.*absent\.pth"):
        ti.main(["--model", "vgg16_gap", "--checkpoint", path, "--out", str(tmp_path / "o")])


def test_missing_torch_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'camjax\[torch\]'"):
        ti.load_torch_state_dict(str(tmp_path / "x.pth"))


def test_half_precision_checkpoints_load_as_float32(tmp_path):
    path = str(tmp_path / "half.pth")
    torch.save({"w": torch.ones(2, dtype=torch.bfloat16), "n": torch.tensor(3)}, path)
    sd = ti.load_torch_state_dict(path)
    assert sd["w"].dtype == np.float32 and sd["n"].dtype == np.int64
