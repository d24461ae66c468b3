"""PyTorch twins of camjax's GAP networks: the baselines of the framework comparisons.

`benchmarks/train_step.py` and `benchmarks/cam_throughput.py` time camjax against these
modules. Each twin is its camjax network layer for layer: the same channel counts (camjax's
`scaled_width`, rounding included), convolution padding, pooling (Caffe's ceil mode for
GoogLeNet), LRN and grouped CAM conv. Submodules are named after camjax's parameter paths
(`conv1_1`, `inception_3a.3x3_reduce`, `cam_conv`, `head`), so `load_camjax_variables` copies a
camjax model's variables in and tests/test_benchmarks.py checks that both compute the same
function. Every twin maps images (B, 3, H, W) to (logits (B, num_classes), feature_map
(B, C, h, w)) in train and eval mode (neither has dropout or batch norm).
"""

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from flax import traverse_util
from torch import nn

from camjax.models.googlenet import INCEPTION_SPECS
from camjax.models.layers import scaled_width
from camjax.models.vgg import VGG16_BLOCKS


class _GapNet(nn.Module):
    """The shared CAM head: CAM_conv 3x3/pad 1 with `groups`, ReLU, GAP and the linear `head`."""

    def _build_head(
        self, in_channels: int, cam_features: int, width: float, groups: int, num_classes: int
    ) -> None:
        # camjax rounds CAM_conv's width to a multiple of groups so the groups split evenly.
        features = scaled_width(cam_features, width, groups)
        self.cam_conv = nn.Conv2d(in_channels, features, 3, padding=1, groups=groups)
        # camjax's Tap: the feature map as a module output, where the CAM libraries hook.
        self.feature_map = nn.Identity()
        self.head = nn.Linear(features, num_classes)

    def _head(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, C, h, w) -> (logits (B, num_classes), feature_map (B, features, h, w))."""
        feature_map = self.feature_map(F.relu(self.cam_conv(x)))
        # camjax pools in float32 whatever the compute dtype.
        logits = self.head(feature_map.float().mean(dim=(2, 3)))
        return logits, feature_map


class VGG16GAP(_GapNet):
    """camjax's VGG16GAP at output stride 16: conv1_1..conv5_3 (3x3, pad 1, ReLU), 2x2/2 max
    pools after blocks 1-4, then the CAM head."""

    def __init__(
        self,
        width: float = 1.0,
        num_classes: int = 1000,
        groups: int = 2,
        cam_features: int = 1024,
    ):
        super().__init__()
        self._convs: list[tuple[str, bool]] = []  # (conv name, max pool after it)
        cin = 3
        for i, (block, channels) in enumerate(VGG16_BLOCKS):
            for j, c in enumerate(channels):
                name = f"{block}_{j + 1}"
                cout = scaled_width(c, width)
                self.add_module(name, nn.Conv2d(cin, cout, 3, padding=1))
                last_of_pooled_block = j == len(channels) - 1 and i < len(VGG16_BLOCKS) - 1
                self._convs.append((name, last_of_pooled_block))
                cin = cout
        self._build_head(cin, cam_features, width, groups, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, 3, H, W) -> (logits (B, num_classes), feature_map (B, C, H/16, W/16))."""
        for name, pool in self._convs:
            x = F.relu(self._modules[name](x))
            if pool:
                x = F.max_pool2d(x, 2, 2)
        return self._head(x)


def _lrn(x: torch.Tensor) -> torch.Tensor:
    """camjax's local_response_norm (Caffe ACROSS_CHANNELS: size 5, alpha 1e-4, beta 0.75, k 1)
    on (B, C, H, W); in float32 like camjax, whose reason holds here too (bf16 pow)."""
    return F.local_response_norm(x.float(), size=5, alpha=1e-4, beta=0.75, k=1.0).to(x.dtype)


def _ceil_pool(x: torch.Tensor) -> torch.Tensor:
    """camjax's max_pool_ceil(x, 3, 2): Caffe rounds the output size up, as ceil_mode does."""
    return F.max_pool2d(x, 3, 2, ceil_mode=True)


class Inception(nn.Module):
    """One BVLC inception module; branches concatenated on channels in Caffe's order."""

    def __init__(self, in_channels: int, spec: tuple[int, ...], width: float):
        super().__init__()
        c1, r3, c3, r5, c5, cp = (scaled_width(c, width) for c in spec)
        # camjax's names ("1x1", ...) are not identifiers, hence add_module.
        for name, conv in {
            "1x1": nn.Conv2d(in_channels, c1, 1),
            "3x3_reduce": nn.Conv2d(in_channels, r3, 1),
            "3x3": nn.Conv2d(r3, c3, 3, padding=1),
            "5x5_reduce": nn.Conv2d(in_channels, r5, 1),
            "5x5": nn.Conv2d(r5, c5, 5, padding=2),
            "pool_proj": nn.Conv2d(in_channels, cp, 1),
        }.items():
            self.add_module(name, conv)
        self.out_channels = c1 + c3 + c5 + cp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, in_channels, H, W) -> (B, out_channels, H, W)."""
        m = self._modules
        b1 = F.relu(m["1x1"](x))
        b3 = F.relu(m["3x3"](F.relu(m["3x3_reduce"](x))))
        b5 = F.relu(m["5x5"](F.relu(m["5x5_reduce"](x))))
        bp = F.relu(m["pool_proj"](F.max_pool2d(x, 3, 1, padding=1)))
        return torch.cat([b1, b3, b5, bp], dim=1)


class GoogLeNetGAP(_GapNet):
    """camjax's GoogLeNetGAP: BVLC GoogLeNet (LRN, Caffe ceil-mode pooling) through
    inception_4e, then the CAM head."""

    def __init__(
        self,
        width: float = 1.0,
        num_classes: int = 1000,
        groups: int = 2,
        cam_features: int = 1024,
    ):
        super().__init__()
        c64, c192 = scaled_width(64, width), scaled_width(192, width)
        self.conv1_7x7_s2 = nn.Conv2d(3, c64, 7, stride=2, padding=3)
        self.conv2_3x3_reduce = nn.Conv2d(c64, c64, 1)
        self.conv2_3x3 = nn.Conv2d(c64, c192, 3, padding=1)
        cin = c192
        for name, spec in INCEPTION_SPECS.items():
            module = Inception(cin, spec, width)
            self.add_module(name, module)
            cin = module.out_channels
        self._build_head(cin, cam_features, width, groups, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, 3, H, W) -> (logits (B, num_classes), feature_map (B, C, ~H/16, ~W/16))."""
        x = _lrn(_ceil_pool(F.relu(self.conv1_7x7_s2(x))))
        x = F.relu(self.conv2_3x3(F.relu(self.conv2_3x3_reduce(x))))
        x = _ceil_pool(_lrn(x))
        for name in INCEPTION_SPECS:
            if name == "inception_4a":
                x = _ceil_pool(x)
            x = self._modules[name](x)
        return self._head(x)


def torch_vgg16_gap(width: float, num_classes: int, groups: int) -> VGG16GAP:
    """camjax's VGG16GAP(width, num_classes, groups) as a PyTorch module."""
    return VGG16GAP(width, num_classes, groups)


def torch_googlenet_gap(width: float, num_classes: int, groups: int) -> GoogLeNetGAP:
    """camjax's GoogLeNetGAP(width, num_classes, groups) as a PyTorch module."""
    return GoogLeNetGAP(width, num_classes, groups)


# camjax model name -> its twin's factory (width, num_classes, groups), randomly initialised.
TORCH_MODELS = {"vgg16_gap": torch_vgg16_gap, "googlenet_gap": torch_googlenet_gap}


def camjax_state_dict(variables: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """A camjax model's {'params': ...} -> the state_dict of its twin (float32 CPU tensors).

    Conv kernels go from HWIO to OIHW and dense kernels from (in, out) to (out, in). The grouped
    CAM conv needs nothing more: camjax's kernel (kh, kw, C/G, F) is nn.Conv(feature_group_count)
    's layout, whose output channels [gF/G, (g+1)F/G) read input channels [gC/G, (g+1)C/G), as
    torch's (F, C/G, kh, kw) grouped weight does; both of camjax's GroupedConv impls use it.
    """
    state = {}
    for path, leaf in traverse_util.flatten_dict(dict(variables["params"])).items():
        value = np.array(leaf, dtype=np.float32)  # a writable copy, as torch wants
        if path[-1] == "kernel":
            value = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
            key = "weight"
        elif path[-1] == "bias":
            key = "bias"
        else:
            raise ValueError(f"camjax parameter {'/'.join(path)} has no PyTorch twin.")
        state[".".join((*path[:-1], key))] = torch.from_numpy(np.ascontiguousarray(value))
    return state


class LogitsOnly(nn.Module):
    """A twin whose forward returns the logits alone, as TorchCAM and pytorch-grad-cam expect;
    its layers keep their names under `net.` (`net.feature_map`, `net.conv5_3`)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[0]


def load_camjax_variables(module: nn.Module, variables: Mapping[str, Any]) -> nn.Module:
    """Copies camjax variables into a twin in place (strict: every tensor on both sides)."""
    module.load_state_dict(camjax_state_dict(variables), strict=True)
    return module
