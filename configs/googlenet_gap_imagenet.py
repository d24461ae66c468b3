"""GoogLeNet-GAP at 224 with the CAM paper's solver (deploy_googlenetCAM + its solver).

SGD momentum 0.9, weight decay 5e-4, base lr 1e-3, x0.1 every 40k iterations, 160k iterations,
batch 64, bias lr x2 (PAPER.md); new layers at 10x as in the WSOL recipe. Data and splits as
`vgg16_gap_imagenet.py` (ILSVRC 2012). This is the Caffe (LRN) structure, trained from
scratch or from converted Caffe weights; `googlenet_gap_bn` is the variant that takes
torchvision's ImageNet weights.
"""

from configs import vgg16_gap_imagenet


def get_config():
    config = vgg16_gap_imagenet.get_config()
    config.model.name = "googlenet_gap"
    config.model.dropout_rate = 0.0  # deploy_googlenetCAM has no dropout before CAM_fc
    del config.model["output_stride"], config.model["num_blocks"]  # VGG16-GAP fields
    return config
