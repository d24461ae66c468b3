"""A recipe scaled to many accelerators: multi-GPU hosts and TPU pods.

    python train.py --config configs/pod.py:cam_resnet50_ilsvrc,1024 --workdir gs://.../run

The argument is `<recipe module>,<global batch>` (e.g. `cam_vgg16_cub,256`). It takes the
recipe and changes only what scale changes:

* the global batch (split over every device of every host; it must divide evenly);
* the learning rate, times global batch / recipe batch (the linear scaling rule of Goyal et
  al., 2017, "Accurate, Large Minibatch SGD"), with a warm-up of 5% of the steps, which that
  rule needs at large batches;
* steps, decay steps and points, checkpoint and evaluation intervals, divided by the same factor, so
  that epochs stay the recipe's;
* bfloat16 compute (parameters, optimizer state and batch-norm statistics stay float32);
* 16 reader threads per host and an evaluation batch equal to the training batch.

Launch one process per host with the same command; `jax.distributed` finds the others from
the environment (`JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`, or the
cluster's own variables with `CAMJAX_DISTRIBUTED=1`, see README). Each host reads its share
of every batch; checkpoints and logs are written once.
"""

import importlib


def get_config(arg: str):
    recipe, _, batch = arg.rpartition(",")
    if not recipe or not batch.isdigit() or int(batch) <= 0:
        raise ValueError(
            f"configs/pod.py takes '<recipe>,<global batch>', e.g. 'cam_resnet50_ilsvrc,1024'; "
            f"got {arg!r}."
        )
    name, _, variant = recipe.partition(":")
    config = importlib.import_module(f"configs.{name}").get_config(*([variant] if variant else []))
    global_batch = int(batch)
    scale = global_batch / config.data.batch_size
    config.data.batch_size = global_batch
    config.eval.batch_size = global_batch
    config.data.num_threads = 16
    config.data.num_workers = 16  # per host; one per core of a 16-core GPU host
    config.model.dtype = "bfloat16"
    config.optim.learning_rate *= scale

    def fewer(steps: int) -> int:  # 0 keeps its meaning (no decay, no periodic evaluation)
        return max(1, round(steps / scale)) if steps else 0

    config.train.num_steps = fewer(config.train.num_steps)
    config.optim.decay_steps = fewer(config.optim.decay_steps)
    config.optim.decay_at = tuple(fewer(s) for s in config.optim.decay_at)
    config.optim.warmup_steps = config.train.num_steps // 20
    config.train.checkpoint_every_steps = fewer(config.train.checkpoint_every_steps)
    config.train.eval_every_steps = fewer(config.train.eval_every_steps)
    return config
