"""ResNet50 CAM on CUB-200-2011, the WSOL protocol's recipe (see configs/wsol_recipe.py).

    python train.py --config configs/cam_resnet50_cub.py --workdir runs/cam_resnet50_cub \\
        --config.init.pretrained_dir=PRETRAINED

`configs/cam_resnet50_cub.py:tiny` is the same recipe shrunk to seconds (the tests use it);
`:acol` (any method of `wsol_recipe.METHODS`) trains that WSOL method with the reference's
solver for it, and `:acol_tiny` shrinks that.
"""

from configs import wsol_recipe


def get_config(variant: str = ""):
    return wsol_recipe.recipe("cub", "resnet50", variant)
