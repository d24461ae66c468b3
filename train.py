"""Trains a GAP network: python train.py --config configs/default.py --workdir runs/default.

Rerunning with the same workdir resumes from its latest checkpoint. Override any config field
with --config.section.field=value (unknown fields are errors).
"""

import sys

from absl import app, flags
from ml_collections import config_flags

from camjax import cli, distributed
from camjax.train.interrupts import TrainingInterrupted, TrainingPreempted
from camjax.train.loop import train_and_evaluate

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.", required=True)
config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
flags.mark_flags_as_required(["config"])


def main(argv):
    del argv
    cli.setup_logging()
    distributed.initialize(save_on_sigterm=True)
    try:
        with cli.user_errors():
            train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except TrainingInterrupted as e:
        print(f"\n{e}", file=sys.stderr)
        # The shell's codes for a SIGTERM and a SIGINT: a scheduler sees the job did not finish.
        sys.exit(143 if isinstance(e, TrainingPreempted) else 130)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
