"""GAP networks for CAM. Each returns `(logits, {'feature_map': ..., 'pre_logits': ...})`.

The batch-norm networks (googlenet_gap_bn, resnet50_cam) also have a `batch_stats` collection:
apply them with `mutable=['batch_stats']` when `train=True`.
"""

from collections.abc import Callable

import flax.linen as nn

from camjax.models.googlenet import (
    GoogLeNetGAP,
    GoogLeNetGAPBN,
    GoogLeNetGAPBNTiny,
    GoogLeNetGAPTiny,
)
from camjax.models.resnet import ResNet50CAM, ResNet50CAMTiny
from camjax.models.vgg import VGG16GAP, VGG16GAPTiny

MODELS: dict[str, Callable[..., nn.Module]] = {
    "vgg16_gap": VGG16GAP,
    "vgg16_gap_tiny": VGG16GAPTiny,
    "googlenet_gap": GoogLeNetGAP,
    "googlenet_gap_tiny": GoogLeNetGAPTiny,
    # torchvision layouts (batch norm), for ImageNet weights converted by torch_import.
    "googlenet_gap_bn": GoogLeNetGAPBN,
    "googlenet_gap_bn_tiny": GoogLeNetGAPBNTiny,
    "resnet50_cam": ResNet50CAM,
    "resnet50_cam_tiny": ResNet50CAMTiny,
}


def create_model(name: str, **kwargs) -> nn.Module:
    """Builds a registered model by name; kwargs set its fields (num_classes, width, dtype...)."""
    if name not in MODELS:
        raise ValueError(f"Unknown model {name!r}; available models: {', '.join(sorted(MODELS))}.")
    return MODELS[name](**kwargs)


__all__ = [
    "MODELS",
    "GoogLeNetGAP",
    "GoogLeNetGAPBN",
    "GoogLeNetGAPBNTiny",
    "GoogLeNetGAPTiny",
    "ResNet50CAM",
    "ResNet50CAMTiny",
    "VGG16GAP",
    "VGG16GAPTiny",
    "create_model",
]
