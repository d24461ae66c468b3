"""GAP networks for CAM. Each returns `(logits, {'feature_map': ..., 'pre_logits': ...})`."""

from collections.abc import Callable

import flax.linen as nn

from camjax.models.googlenet import GoogLeNetGAP, GoogLeNetGAPTiny
from camjax.models.vgg import VGG16GAP, VGG16GAPTiny

MODELS: dict[str, Callable[..., nn.Module]] = {
    "vgg16_gap": VGG16GAP,
    "vgg16_gap_tiny": VGG16GAPTiny,
    "googlenet_gap": GoogLeNetGAP,
    "googlenet_gap_tiny": GoogLeNetGAPTiny,
}


def create_model(name: str, **kwargs) -> nn.Module:
    """Builds a registered model by name; kwargs set its fields (num_classes, width, dtype...)."""
    if name not in MODELS:
        raise ValueError(f"Unknown model {name!r}; available models: {', '.join(sorted(MODELS))}.")
    return MODELS[name](**kwargs)


__all__ = ["MODELS", "GoogLeNetGAP", "GoogLeNetGAPTiny", "VGG16GAP", "VGG16GAPTiny", "create_model"]
