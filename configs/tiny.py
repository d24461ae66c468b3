"""A seconds-long run on a small slice of the embedded dataset: smoke tests and the test suite.

Same code path as the default job, shrunk: a width-1/16 VGG16-GAP, 64 training images, 6 steps.
"""

from configs import default


def get_config():
    config = default.get_config()
    config.data.num_train = 64
    config.data.num_validation = 16
    config.data.num_test = 16
    config.data.batch_size = 16
    config.model.width = 1 / 16
    # The paper's conv5_3 cut at stride 4 (a 16x16 CAM), not the default's conv4_3 at stride 2:
    # every WSOL method trains on tiny (SPG reads conv5_3), and its runs stay seconds long.
    config.model.num_blocks = 5
    config.model.output_stride = 4
    config.optim.warmup_steps = 0
    config.train.num_steps = 6
    config.train.log_every_steps = 2
    config.train.checkpoint_every_steps = 2
    config.train.eval_every_steps = 0
    config.eval.batch_size = 16
    config.eval.threshold_grid_step = 0.1
    config.eval.num_gallery = 2
    config.eval.wsol.threshold_step = 0.01
    return config
