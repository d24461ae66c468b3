"""The CAM recipes of the WSOL protocol (Choe et al., CVPR 2020; clovaai/wsolevaluation).

`recipe(dataset, architecture, variant)` builds the config that the per-recipe files
(`cam_vgg16_cub.py`, `cam_resnet50_cub.py`, `cam_vgg16_ilsvrc.py`, `cam_resnet50_ilsvrc.py`)
return. Where the numbers come from:

* wsolevaluation `config.py` defaults and `main.py`: resize 256x256, random crop 224,
  horizontal flip (its train transform), evaluation at 224x224, SGD momentum 0.9 with
  Nesterov, weight decay on every parameter (torch's SGD; biases included:
  `optim.decay_biases`), the classifier at `lr_classifier_ratio` 10x the backbone's
  rate (VGG16: CAM_conv and head; ResNet50: layer4 and head), the rate x0.1 as its loop
  decays it (`adjust_learning_rate(epoch + 1)` before each 0-based epoch, so after epochs
  frequency - 1, 2 frequency - 1, ...: `decay_epochs`), CAM thresholds every 0.001, IoU
  30/50/70 for MaxBoxAccV2; the linear classifier starts from N(0, 0.01) (`wsol/util.py
  initialize_weights`), not Flax's LeCun normal.
* Known difference from the reference: its `eval_checkpoint_type` may pick the best
  checkpoint on validation, where camjax evaluates the last one.
* wsolevaluation README (its example command, CUB + VGG16 + CAM): batch 32, 50 epochs,
  decay every 15 epochs, weight decay 5e-4, lr 1.268269e-5 (found by their random search),
  `large_feature_map` False for VGG16 (14x14 CAM: our VGG16-GAP at output stride 16, with an
  ungrouped CAM_conv, as their `conv6` is one 3x3 512->1024 convolution, and no dropout).
* ImageNet (ILSVRC): 10 epochs, decay every 3 epochs, batch 32 (the same README family of
  commands as used by works building on wsolevaluation). Weight decay 5e-4 for VGG16 and
  1e-4 for ResNet50 (`config.py`'s default).
* ResNet50: `large_feature_map` True in those commands: layer3 and layer4 at stride 1 in
  wsolevaluation's `ResNetCam`, a 28x28 CAM (our output stride 8).
* Learning rates other than CUB + VGG16 come from public command lines of works built on
  wsolevaluation, not from its README: 1.7e-4 for ResNet50 CAM on CUB, 1.7e-5 for VGG16 CAM
  on ILSVRC, 3.1e-5 for ResNet50 on ILSVRC (a CAM-based method's setting). The protocol's own
  point is that learning rates are tuned on its validation split: treat these as starting
  points and tune them on `validation`.

Steps: epochs x (training images // batch), computed here from the split sizes of the
prepared datasets (`camjax.data`). Pretrained initialisation: convert torchvision's ImageNet
weights once with `python -m camjax.models.torch_import` and set `init.pretrained_dir`.

`variant` selects the WSOL training method (`configs/cam_vgg16_cub.py:acol`; any of `METHODS`,
default CAM) with the reference's solver for it (`set_method`: which layers learn at the
classifier rate, and Bridging's own CUB solver), and its method hyperparameters
(`config.method`: wsolevaluation's `config.py` defaults, `set_method_defaults`).
`variant="tiny"` (or `<method>_tiny`) shrinks the recipe to seconds on a CPU (width-1/16
network, 64 px, two steps) for the tests on tiny prepared fixtures; everything else (data path,
splits, protocol, solver structure) stays the recipe's.
"""

import ml_collections

import camjax.data
from configs import default

EPOCHS = {"cub": (50, 15), "ilsvrc": (10, 3)}  # (epochs, decay every)
LEARNING_RATES = {
    ("cub", "vgg16"): 1.268269e-5,
    ("cub", "resnet50"): 1.7e-4,
    ("ilsvrc", "vgg16"): 1.7e-5,
    ("ilsvrc", "resnet50"): 3.1e-5,
}
WEIGHT_DECAY = {"vgg16": 5e-4, "resnet50": 1e-4}
BATCH_SIZE = 32


METHODS = ("cam", "has", "cutmix", "adl", "acol", "spg", "bridging")

# 'bridging' (Kim et al., CVPR 2022): the official ResNet50 config (configs/config_exp.yaml)
# where it differs from the VGG16 one that configs/default.py holds.
BRIDGING_RESNET50 = {
    "bridging_sim_fg_threshold": 0.4,
    "bridging_sim_bg_threshold": 0.2,
    "bridging_norm_weight": 0.05,
    "bridging_drop_weight": 2.0,
    "bridging_drop_prob": 0.25,
}
# Its CUB solver (configs/config_exp_vgg.yaml, config_exp.yaml; trainer.py), by backbone:
# (lr, lr_classifier_ratio, weight_decay, batch_size). 70 epochs, the learning rate x0.2 after
# epochs 40 and 60 (`lr_decay_points` [41, 61] with `lr_decay_rate` 0.2, applied before the
# 1-based epoch). The VGG16 config's 20 warm epochs run at its warm_batch_size 32; camjax
# keeps one batch, 64, throughout.
BRIDGING_CUB_SOLVER = {"vgg16": (0.004, 5.0, 5e-4, 64), "resnet50": (0.002, 10.0, 1e-4, 32)}
BRIDGING_CUB_EPOCHS, BRIDGING_CUB_DECAY_AFTER = 70, (40, 60)

# The layers at lr_classifier_ratio x the backbone rate, as the reference solvers split them:
# wsolevaluation's main.py puts every VGG16 parameter outside `features.` there (VggSpg names
# conv4 and conv5 SPG_A_1 and SPG_A_2, so they count) and, for ResNet50, layer4 and fc only
# (ResNetAcol and ResNetSpg have no fc: their new layers stay at the backbone rate);
# bridging-gap-wsol's trainer.py: VGG16 as wsolevaluation, ResNet50 its fc only.
NEW_LAYERS = {
    ("vgg16", "cam"): ("cam_conv", "head"),
    ("vgg16", "spg"): ("conv4", "conv5", "head"),
    ("resnet50", "cam"): ("layer4", "head"),
    ("resnet50", "acol"): ("layer4",),
    ("resnet50", "spg"): ("layer4",),
    ("resnet50", "bridging"): ("head",),
}


def decay_epochs(epochs: int, frequency: int) -> tuple[int, ...]:
    """The 0-based epochs that begin at a decayed rate in wsolevaluation's main.py: it calls
    `adjust_learning_rate(epoch + 1)` before each 0-based epoch, which decays when
    (epoch + 1) % frequency == 0: epochs frequency - 1, 2 frequency - 1, ... (CUB: 14, 29 and
    44, so after 14, 29 and 44 completed epochs of 50)."""
    return tuple(range(frequency - 1, epochs, frequency))


def set_method_defaults(method: ml_collections.ConfigDict, dataset: str, architecture: str):
    """The WSOL methods' per-backbone and per-dataset reference values (used only when
    config.method.name selects that method)."""
    if architecture == "resnet50":
        method.update(BRIDGING_RESNET50)
    if dataset == "ilsvrc":
        method.bridging_norm_region = "target"  # the official code's ILSVRC branch


def parse_variant(variant: str) -> tuple[str, bool]:
    """'' | 'tiny' | METHOD | METHOD_tiny -> (method name, tiny)."""
    tiny = variant == "tiny" or variant.endswith("_tiny")
    method = variant.removesuffix("tiny").removesuffix("_") or "cam"
    if method not in METHODS:
        raise ValueError(
            f"config variant must be '', 'tiny', a method or <method>_tiny, the methods "
            f"{', '.join(METHODS)}; got {variant!r}."
        )
    return method, tiny


def set_method(config: ml_collections.ConfigDict, dataset: str, architecture: str, method: str):
    """Switches a recipe to `method` with the reference's solver for it.

    wsolevaluation trains every method with the solver of the CAM recipe (its README command);
    its per-method learning rates come from a random search on train-fullsup whose results
    are in a spreadsheet, not in the repository, so camjax keeps the CAM recipe's rates (tune
    them on `validation`, as the protocol intends). The method's own hyperparameters are
    config.py's defaults, which configs/default.py holds. Bridging on CUB takes its official
    solver (BRIDGING_CUB_SOLVER); its repository has no ILSVRC config, so the ILSVRC recipes
    keep their solver.
    """
    config.method.name = method
    optim = config.optim
    optim.new_layers = NEW_LAYERS.get((architecture, method), NEW_LAYERS[architecture, "cam"])
    if method == "bridging" and dataset == "cub":
        lr, ratio, weight_decay, batch_size = BRIDGING_CUB_SOLVER[architecture]
        steps_per_epoch = camjax.data.dataset(dataset).train_images() // batch_size
        config.data.batch_size = batch_size
        optim.learning_rate, optim.new_layer_lr_mult = lr, ratio
        optim.weight_decay = weight_decay
        optim.decay_factor = 0.2
        optim.decay_steps = 0
        optim.decay_at = tuple(e * steps_per_epoch for e in BRIDGING_CUB_DECAY_AFTER)
        config.train.num_steps = BRIDGING_CUB_EPOCHS * steps_per_epoch
        config.train.checkpoint_every_steps = steps_per_epoch


def recipe(dataset: str, architecture: str, variant: str = "") -> ml_collections.ConfigDict:
    if (dataset, architecture) not in LEARNING_RATES:
        raise ValueError(f"no WSOL CAM recipe for {architecture} on {dataset}.")
    method, tiny = parse_variant(variant)
    builder = camjax.data.dataset(dataset)  # the registry's class, by its alias
    config = default.get_config()
    data = config.data
    data.name = builder.name
    data.image_size, data.resize_size = 224, 256
    data.batch_size = BATCH_SIZE
    data.max_boxes = 20  # ILSVRC validation images have up to 20 boxes
    # Validation images per class, held out of data disjoint from test (camjax.data): 5 of
    # CUB's train split and 10 of ILSVRC's validation set, the sizes of the reference's splits.
    data.validation_per_class = builder.VALIDATION_PER_CLASS
    data.num_threads = 16
    data.num_workers = 16  # training's worker processes, one per core of a 16-core GPU host

    model = config.model
    model.num_classes = builder.NUM_CLASSES
    model.width = 1.0
    model.dropout_rate = 0.0
    # wsolevaluation's `initialize_weights`: the linear classifier from N(0, 0.01), bias 0 (its
    # nn.Linear branch; the pretrained state dicts it loads drop their classifiers).
    model.head_init_std = 0.01
    if architecture == "vgg16":
        model.name = "vgg16_gap"
        model.groups = 1
        model.output_stride = 16
        model.num_blocks = 5  # conv5_3, the reference's cut
    else:
        model.name = "resnet50_cam"
        model.output_stride = 8
        del model["groups"], model["grouped_conv_impl"], model["num_blocks"]

    epochs, decay_every = EPOCHS[dataset]
    # Training images per epoch: CUB's official train split minus the 5-per-class validation
    # holdout; ILSVRC's 1,281,167 training images.
    steps_per_epoch = builder.train_images() // BATCH_SIZE
    optim = config.optim
    optim.name = "sgd"
    optim.learning_rate = LEARNING_RATES[dataset, architecture]
    optim.momentum = 0.9
    optim.weight_decay = WEIGHT_DECAY[architecture]
    optim.decay_biases = True  # torch's SGD decays every parameter
    optim.schedule = "step"
    optim.warmup_steps = 0
    optim.decay_steps = 0
    optim.decay_at = tuple(e * steps_per_epoch for e in decay_epochs(epochs, decay_every))
    optim.decay_factor = 0.1
    optim.new_layer_lr_mult = 10.0
    optim.bias_lr_mult = 1.0
    optim.nesterov = True  # the reference's torch.optim.SGD(..., nesterov=True)
    optim.nonnegative_head = False  # the reference's head
    set_method_defaults(config.method, dataset, architecture)

    train = config.train
    train.num_steps = epochs * steps_per_epoch
    train.log_every_steps = 50
    train.checkpoint_every_steps = steps_per_epoch
    train.eval_every_steps = 0  # validation once, at the end

    ev = config.eval
    ev.batch_size = 64
    ev.threshold_grid_step = 0.01
    ev.num_gallery = 16
    ev.wsol.eval_size = 224
    ev.wsol.pxap = False  # CUB masks exist only with segmentations.tgz; see README

    set_method(config, dataset, architecture, method)

    if tiny:
        data.image_size, data.resize_size = 64, 73
        data.batch_size = 8
        data.num_threads = 2
        data.num_workers = 0
        data.validation_per_class = 1
        model.name += "_tiny"
        model.width = 1 / 16
        if architecture == "vgg16":
            model.output_stride = 4
        train.num_steps = 2
        train.log_every_steps = 1
        train.checkpoint_every_steps = 2
        optim.decay_at = (1,)
        ev.batch_size = 8
        ev.threshold_grid_step = 0.1
        ev.num_gallery = 1
        ev.wsol.eval_size = 64
        ev.wsol.threshold_step = 0.01
    return config
