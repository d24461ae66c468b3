"""Evaluates a trained run: python evaluate.py --config configs/default.py --workdir runs/default.

Restores the latest checkpoint in workdir, picks the CAM threshold on the validation split,
reports classification and localization on the test split, writes workdir/metrics.json and a
CAM gallery (workdir/gallery/*.png, workdir/gallery.png). With --export_dir it also writes
both splits' WSOL score maps and metadata in the reference evaluator's layout
(camjax/evaluation/export.py).
"""

from absl import app, flags, logging
from ml_collections import config_flags

from camjax.evaluation import evaluator, export, report
from camjax.train import distributed

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory of a trained run.", required=True)
flags.DEFINE_string(
    "export_dir",
    None,
    "Also write the validation and test score maps (one .npy per image id) and metadata files "
    "as clovaai/wsolevaluation reads them, under this directory.",
)
config_flags.DEFINE_config_file(
    "config", None, "The config the run was trained with.", lock_config=True
)
flags.mark_flags_as_required(["config"])


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    distributed.initialize()
    report.print_report(evaluator.run_evaluation(FLAGS.config, FLAGS.workdir))
    if FLAGS.export_dir:
        for split, stats in export.export_wsol(
            FLAGS.config, FLAGS.workdir, FLAGS.export_dir
        ).items():
            logging.warning(
                "exported %d %s score maps to %s (%.0f images/s)",
                stats["images"],
                split,
                FLAGS.export_dir,
                stats["images_per_second"],
            )


if __name__ == "__main__":
    app.run(main)
