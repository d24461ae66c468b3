"""Trains a GAP network: python train.py --config configs/default.py --workdir runs/default.

Rerunning with the same workdir resumes from its latest checkpoint, with the run's config: a
change to what training computes is refused unless --resume_with_changes (where data is read
from, when the run logs, saves and validates, and a longer num_steps are not such changes).
Override any config field with --config.section.field=value (unknown fields are errors).
"""

import sys

from absl import app, flags
from ml_collections import config_flags

from camjax import cli, distributed
from camjax.train.interrupts import TrainingInterrupted, TrainingPreempted
from camjax.train.loop import train_and_evaluate

FLAGS = flags.FLAGS
cli.check_flagfiles(sys.argv)  # before DEFINE_config_file reads them
flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.", required=True)
config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
flags.mark_flags_as_required(["config"])
flags.DEFINE_bool(
    "resume_with_changes",
    False,
    "Resume a run whose config changes what training computes (refused otherwise): the run "
    "goes on under the new values, which the steps saved from then on record.",
)


def main(argv):
    del argv
    cli.setup_logging()
    distributed.initialize(save_on_sigterm=True)
    try:
        with cli.user_errors():
            train_and_evaluate(FLAGS.config, FLAGS.workdir, FLAGS.resume_with_changes)
    except TrainingInterrupted as e:
        print(f"\n{e}", file=sys.stderr)
        # The shell's codes for a SIGTERM and a SIGINT: a scheduler sees the job did not finish.
        sys.exit(143 if isinstance(e, TrainingPreempted) else 130)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
