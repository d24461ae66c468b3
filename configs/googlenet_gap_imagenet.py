"""GoogLeNet-GAP at 224 with the CAM paper's solver (deploy_googlenetCAM + its solver).

SGD momentum 0.9, weight decay 5e-4, base lr 1e-3, x0.1 every 40k iterations, 160k iterations,
batch 64, bias lr x2 (PAPER.md); new layers at 10x as in the WSOL recipe. Data and splits as
`vgg16_gap_imagenet.py` (ILSVRC 2012). This is the Caffe (LRN) structure, trained from
scratch or from converted Caffe weights.

`configs/googlenet_gap_imagenet.py:bn` is `googlenet_gap_bn`, the torchvision layout that takes
torchvision's ImageNet weights (`--config.init.pretrained_dir`), with `model.transform_input`
True: torchvision's googlenet weights expect its input transform.
"""

from configs import vgg16_gap_imagenet


def get_config(variant: str = ""):
    if variant not in ("", "bn"):
        raise ValueError(f"config variant must be '' or 'bn' (googlenet_gap_bn); got {variant!r}.")
    config = vgg16_gap_imagenet.get_config()
    config.model.name = "googlenet_gap_bn" if variant else "googlenet_gap"
    config.model.dropout_rate = 0.0  # deploy_googlenetCAM has no dropout before CAM_fc
    del config.model["output_stride"], config.model["num_blocks"]  # VGG16-GAP fields
    if variant:
        config.model.transform_input = True
    return config
