"""camjax: Class Activation Mapping (Zhou et al., CVPR 2016) in JAX/Flax.

import camjax
model = camjax.models.create_model("vgg16_gap", num_classes=1000)
variables = model.init(jax.random.key(0), images[:1])
out = camjax.cam_fn(model, variables, top_k=5)(images)   # logits, classes, cams
boxes = camjax.localization.box_from_scoremap(out.cams[:, 0], 0.2)
"""

from camjax import explain, localization, models
from camjax.cam import (
    cams_all_classes,
    cams_for_classes,
    cams_top_k,
    head_kernel,
    normalize_minmax,
    postprocess,
)
from camjax.explain import CamOutput, cam_fn, explainer
from camjax.resize import resize_maps

__version__ = "0.1.0"

__all__ = [
    "CamOutput",
    "cam_fn",
    "cams_all_classes",
    "cams_for_classes",
    "cams_top_k",
    "explain",
    "explainer",
    "head_kernel",
    "localization",
    "models",
    "normalize_minmax",
    "postprocess",
    "resize_maps",
]
