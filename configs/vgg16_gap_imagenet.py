"""VGG16-GAP on ILSVRC 2012 at 224 with the CAM paper's fine-tuning solver (SGD, lr 1e-3).

Data: `ilsvrc2012_loc` (`python -m camjax.data.prepare ilsvrc --manual_dir DIR`); CAM
thresholds are chosen on 10 images per class held out of the official validation set and
reported on the other 40,000 (camjax/data/ilsvrc.py). Start from converted torchvision
weights with `--config.init.pretrained_dir` (camjax/models/torch_import.py).

Sources: PAPER.md (deploy_vgg16CAM; GoogLeNet-GAP solver: momentum 0.9, weight decay 5e-4,
base lr 1e-3, x0.1 every 40k of 160k iterations, batch 64, bias lr x2) and the WSOL recipe
(resize 256, crop 224, new layers at 10x lr).
"""

from configs import default


def get_config():
    config = default.get_config()
    config.data.name = "ilsvrc2012_loc"
    config.data.max_boxes = 20  # ILSVRC validation images have up to 20 boxes
    config.data.validation_per_class = 10
    config.data.num_threads = 16
    config.data.num_workers = 16  # training's worker processes (configs/default.py)
    config.model.num_classes = 1000
    config.data.image_size = 224
    config.data.resize_size = 256
    config.data.batch_size = 64
    config.model.name = "vgg16_gap"
    config.model.width = 1.0
    config.model.output_stride = 16
    config.model.num_blocks = 5  # conv5_3, the paper's cut
    config.model.dropout_rate = 0.5
    config.optim.name = "sgd"
    config.optim.learning_rate = 1e-3
    config.optim.momentum = 0.9
    config.optim.weight_decay = 5e-4
    config.optim.schedule = "step"
    config.optim.warmup_steps = 0
    config.optim.decay_steps = 40_000
    config.optim.decay_factor = 0.1
    config.optim.new_layer_lr_mult = 10.0
    config.optim.bias_lr_mult = 2.0
    config.optim.nonnegative_head = False  # the paper's head
    config.train.num_steps = 160_000
    config.train.log_every_steps = 100
    config.train.checkpoint_every_steps = 5_000
    config.train.eval_every_steps = 10_000
    config.eval.batch_size = 64
    config.eval.threshold_grid_step = 0.01
    config.eval.wsol.pxap = False  # ILSVRC has boxes, no masks
    return config
