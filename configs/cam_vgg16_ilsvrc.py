"""VGG16-GAP CAM on ILSVRC 2012, the WSOL protocol's recipe (see configs/wsol_recipe.py).

    python train.py --config configs/cam_vgg16_ilsvrc.py --workdir runs/cam_vgg16_ilsvrc \\
        --config.init.pretrained_dir=PRETRAINED

`configs/cam_vgg16_ilsvrc.py:tiny` is the same recipe shrunk to seconds (the tests use it);
`:acol` (any method of `wsol_recipe.METHODS`) trains that WSOL method with the reference's
solver for it, and `:acol_tiny` shrinks that.
"""

from configs import wsol_recipe


def get_config(variant: str = ""):
    return wsol_recipe.recipe("ilsvrc", "vgg16", variant)
