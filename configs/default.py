"""Default: a width-1/16 VGG16-GAP trained from scratch on the embedded wsol_shapes dataset (64 px).

Sized for a 2-core CPU: it generates the data, trains, evaluates and writes pictures in about
5 minutes there. The network ends at conv4_3 with pool1 only (output_stride 2): a 32x32 CAM at
64 px, finer than the paper's 14x14 at 224 (strides 8 and 16 localized far worse in the same
time), and its class weights are kept non-negative. Chosen on validation over 3 seeds for the
worst seed (benchmarks/RESULTS.md, issue 10). Every other config starts from this one and
overrides fields.
"""

import ml_collections

from camjax import explain


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.rng_impl = "rbg"  # jax PRNG; "threefry2x32" is jax's default (slower to compile)

    config.data = data = ml_collections.ConfigDict()
    data.name = "wsol_shapes"  # the embedded, procedurally rendered WSOL dataset
    data.data_dir = ""  # tfds data dir; "" means tfds's default (~/tensorflow_datasets)
    data.image_size = 64  # train crop and eval size (the paper: 224)
    data.resize_size = 73  # train: resize to this, then random crop (the paper: 256 -> 224)
    # Embedded dataset only: generate smaller splits (0 = the standard 10,000/1,000/1,000).
    data.num_train = 0
    data.num_validation = 0
    data.num_test = 0
    data.max_boxes = 4  # GT boxes per image, padded
    data.train_split = "train"
    data.val_split = "validation"  # CAM threshold is chosen here
    data.test_split = "test"
    data.batch_size = 32  # global, split over all devices; 32 gives the 32x32 CAM 1,200 updates
    data.num_threads = 2  # grain reader threads per host (when num_workers is 0)
    # Training's grain worker processes per host: 0 reads with the threads above (enough on 2
    # cores); threads hold the GIL for ~0.4 ms per example, so accelerator hosts use workers.
    data.num_workers = 0
    # Decode and resize the train split once into host memory when it takes at most this many
    # GiB (0: never): every epoch reads it from there instead of decoding again. Threads only:
    # with num_workers, each worker process would hold its own copy.
    data.cache_train_gib = 2.0
    data.device_prefetch = 2  # batches copied to the devices ahead of the step using them
    # Normalisation in [0, 1] units (ImageNet RGB statistics, as torchvision weights expect).
    data.mean = (0.485, 0.456, 0.406)
    data.std = (0.229, 0.224, 0.225)

    config.model = model = ml_collections.ConfigDict()
    model.name = "vgg16_gap"
    model.num_classes = 10
    model.width = 1 / 16  # channel multiplier; 1.0 is the paper's VGG16-GAP
    model.groups = 2  # CAM_conv grouping: 2 as in the released model, 1 as the paper text
    model.dropout_rate = 0.0  # the paper's 0.5 slows a from-scratch CPU run too much
    model.output_stride = 2  # 64/2 = a 32x32 CAM; the paper's 16 gives 14x14 at 224
    # Conv blocks before the head: 5 = conv5_3 as the paper; 4 = conv4_3, whose ~42 px receptive
    # field at stride 2 fits the 64 px objects (issue 10's probes, benchmarks/RESULTS.md).
    model.num_blocks = 4
    model.pooling = "avg"  # GAP, the paper's; "max" is its GMP comparison
    model.dtype = "float32"  # compute dtype; "bfloat16" on TPU/GPU (params stay float32)
    model.grouped_conv_impl = "split"

    # Initial weights: a directory written by `python -m camjax.models.torch_import` (converted
    # torchvision ImageNet weights; the new layers stay freshly initialised). "" = from scratch.
    # Used only when a run starts; a resumed run restores its own checkpoint.
    config.init = init = ml_collections.ConfigDict()
    init.pretrained_dir = ""

    # The WSOL training method (camjax/train/wsol_methods.py); defaults are wsolevaluation's.
    config.method = method = ml_collections.ConfigDict()
    method.name = "cam"  # "cam", "has", "cutmix", "adl", "acol", "bridging" or "spg"
    method.has_grid_size = 4  # Hide-and-Seek: side of the hidden cells, pixels
    method.has_drop_rate = 0.5  # Hide-and-Seek: probability of hiding a cell
    method.cutmix_beta = 1.0  # CutMix: lambda ~ Beta(beta, beta); 0 disables
    method.cutmix_prob = 1.0  # CutMix: probability of mixing a batch
    method.adl_drop_rate = 0.75  # ADL: probability of the drop mask (else the importance map)
    method.adl_threshold = 0.9  # ADL: drop where attention >= threshold * its max
    # ACoL: head B reads the features where head A's min-max normalised map of the GT class is
    # below this (wsolevaluation's --acol_threshold); VGG16-GAP and ResNet50-CAM only, no dropout.
    method.acol_threshold = 0.7
    # Bridging the gap (Kim et al., CVPR 2022): CAM + weighted L_sim, L_norm, L_drop. Defaults:
    # the official VGG16 config (configs/config_exp_vgg.yaml); the ResNet50 recipes set its
    # config_exp.yaml values (configs/wsol_recipe.py). VGG16-GAP and ResNet50-CAM only.
    method.bridging_sim_weight = 0.5  # loss_ratio_sim
    method.bridging_sim_fg_threshold = 0.6  # sim_fg_thres on the min-max feature norm
    method.bridging_sim_bg_threshold = 0.1  # sim_bg_thres
    method.bridging_norm_weight = 0.15  # loss_ratio_norm
    # L_norm's regions by the max cosine over classes ("max_class", the official CUB rule) or
    # the GT class's ("target", its ILSVRC rule; the ILSVRC recipes set it).
    method.bridging_norm_region = "max_class"
    method.bridging_drop_weight = 3.0  # loss_ratio_drop
    method.bridging_drop_threshold = 0.8  # attentive dropout: drop_threshold x max attention
    method.bridging_drop_prob = 0.5  # attentive dropout: probability per position above it
    method.bridging_warmup_fraction = 20 / 70  # no L_sim, L_norm for 20 of 70 epochs
    # SPG: BCE targets 1 above the high and 0 below the low threshold (255: ignored) of each
    # guide: 1 = the label's normalised class map for B2, 2 = sigmoid(B2) for B1, 3 = the mean
    # of sigmoid(B1) and sigmoid(B2) for C (wsolevaluation's --spg_threshold_* defaults, the same
    # for every backbone there). VGG16-GAP (num_blocks 5) and ResNet50-CAM only, no dropout.
    method.spg_threshold_1h = 0.7
    method.spg_threshold_1l = 0.01
    method.spg_threshold_2h = 0.5
    method.spg_threshold_2l = 0.05
    method.spg_threshold_3h = 0.7
    method.spg_threshold_3l = 0.1
    # Fewer foreground pixels than this (at the input size) in an image: its foreground becomes
    # attention > fallback x its maximum instead (the reference's 30 pixels at 224 and 0.7).
    method.spg_min_foreground = 30
    method.spg_fallback_fraction = 0.7

    config.optim = optim = ml_collections.ConfigDict()
    optim.name = "adamw"  # from scratch on CPU Adam converges in far fewer steps than SGD
    optim.learning_rate = 1e-3  # 2e-3 localized worse (val GT-known 63% vs 67% at step 600)
    optim.momentum = 0.9  # SGD momentum, or Adam's b1
    optim.nesterov = False
    optim.weight_decay = 5e-4
    optim.decay_biases = False  # all but biases (the Caffe CAM solvers); True: every parameter
    optim.schedule = "cosine"
    optim.warmup_steps = 100
    optim.decay_steps = 0  # 'step' schedule: decay every this many steps
    optim.decay_at = ()  # 'step' schedule: decay at these steps instead (a tuple of ints)
    optim.decay_factor = 0.1
    optim.new_layer_lr_mult = 1.0  # 10 when fine-tuning a pretrained backbone
    optim.new_layers = ("cam_conv", "head")  # parameter names (or prefixes) of that group
    optim.bias_lr_mult = 1.0  # 2 in the Caffe solvers
    # Class weights kept >= 0 (projected after each update): a CAM with negative weights also
    # sums evidence against its class, and min-max normalisation (the WSOL protocol's) then
    # sets each map's background at its own level (benchmarks/RESULTS.md, issue 10).
    optim.nonnegative_head = True
    optim.grad_clip_norm = 0.0  # 0 disables

    config.train = train = ml_collections.ConfigDict()
    # ~4 epochs at batch 32. Chosen on validation: 2,400 steps start to learn the shapes (top-1
    # cls 34-44% against ~28%) but leave the maps of 2 seeds of 3 where they were (signed head;
    # benchmarks/RESULTS.md, issue 10), at twice the quick start's time.
    train.num_steps = 1200
    train.log_every_steps = 50
    train.checkpoint_every_steps = 500
    # Validation accuracy and localization every N steps during training; 0: none (the quick
    # start runs evaluate.py right after, which validates: in train.py it cost ~14 s of it).
    train.eval_every_steps = 0
    train.keep_checkpoints = 2

    config.eval = ev = ml_collections.ConfigDict()
    ev.batch_size = 128
    ev.iou_threshold = 0.5
    ev.fixed_threshold = 0.2  # the CAM paper's threshold, reported beside the tuned one
    ev.threshold_grid_step = 0.05  # CAM thresholds tried on the validation split
    ev.top_k = 5
    ev.resize_method = "bicubic"  # CAM upsampling, OpenCV INTER_CUBIC as the WSOL protocol
    # The paper's box heuristic thresholds maps normalised this way: "max" (ReLU, then divide
    # by the max) as the CAM paper's code, or "minmax" as the WSOL protocol, whose own metrics
    # always use min-max. Chosen on validation: "max" localized 74.1% vs 70.2% (seed 0) and
    # 68.4% vs 62.4% (an AVX2 CPU's draw) at their best thresholds.
    ev.cam_normalization = "max"
    ev.center_box_grid_step = 0.05  # sizes of the centered-box baseline, as image fractions
    ev.num_gallery = 16  # CAM pictures written for the first N test images
    ev.max_images = 0  # evaluate only the first N images of each split; 0 = all
    # The saliency method for every metric and the gallery: a name of camjax.explain.METHODS
    # ("cam": the GAP network's own CAM, the paper's), read at the module path `layer`.
    ev.method = "cam"
    ev.layer = "feature_map"
    # Every method's own options at their defaults (e.g. --config.eval.options.ss_cam.std=0.5);
    # only the chosen method's are read. ('cam' reads the GAP network's head itself.)
    ev.options = {m: o for m, o in explain.default_options().items() if m != "cam"}
    # Faithfulness of the method's maps on the test split (camjax/evaluation/faithfulness.py):
    # Average Drop and Increase in Confidence, RISE Deletion/Insertion AUC, pointing game.
    ev.faithfulness = faith = ml_collections.ConfigDict()
    faith.enabled = False  # deletion/insertion: (ceil(image_size^2 / step) + 1) x 2 forwards
    faith.target = "predicted"  # the class explained: "predicted" (top-1, as RISE) or "label"
    faith.variant = "paper"  # Average Drop: "paper" (percent), "torchcam", "grad_cam" (fractions)
    faith.score = "softmax"  # the probability; "logit" as the peers (variant torchcam, grad_cam)
    faith.step = 0  # pixels per deletion/insertion step; 0 = the image width (RISE's demo: 224)
    faith.chunk = 8  # curve points per scanned forward pass (memory: 2 x chunk x batch images)
    faith.resize = "bilinear"  # map upsampling (TorchCAM's, and OpenCV INTER_LINEAR = grad-cam's)
    faith.tolerance = 15.0  # pointing game, pixels of the evaluated image (TorchRay's 15)
    faith.max_images = 0  # first N test images; 0 = config.eval.max_images
    # The WSOL protocol of Choe et al. (CVPR 2020, clovaai/wsolevaluation) on validation and
    # test: MaxBoxAcc, MaxBoxAccV2, BoxAcc at fixed_threshold and at validation's thresholds,
    # top-1 loc, PxAP. Score maps: GT-class CAM, bicubic to eval_size, min-max, uint8.
    ev.wsol = wsol = ml_collections.ConfigDict()
    wsol.enabled = True
    wsol.threshold_step = 0.001  # CAM thresholds np.arange(0, 1, step): the cam_curve_interval
    wsol.iou_thresholds = (30, 50, 70)  # MaxBoxAccV2's IoU thresholds, percent
    wsol.eval_size = 0  # side of the score maps; 0 = data.image_size (the reference: its input)
    wsol.pxap = True  # pixel AP from GT masks (wsol_shapes has masks; False for box-only data)
    wsol.boxes = True  # MaxBoxAcc(V2), BoxAcc, top-1 loc; False for mask-only data (OpenImages)
    # True: score maps as the reference makes them, the feature-map CAMs resized with float64
    # cv2.resize(INTER_CUBIC) and min-max normalised in float64 on the host, so every count and
    # PxAP is the reference's (on the 2-core CPU no slower than the device path). False: float32
    # on device, which moves one uint8 level in about a quarter of maps, rarely a box verdict
    # (benchmarks/RESULTS.md, "The score maps' peak pinned to 1"); for an accelerator whose
    # host cannot keep up.
    wsol.exact_float64 = True
    return config
