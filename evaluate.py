"""Evaluates a trained run: python evaluate.py --workdir runs/default.

Uses the config the run saved (workdir/config.json), with --config.x=... overrides of its
fields (e.g. --config.eval.max_images=100); an explicit --config file is used instead, and its
differences from the run's config are logged as a warning. Restores the latest checkpoint in
workdir, picks the CAM threshold on the validation split, reports classification and
localization on the test split, writes workdir/metrics.json and a CAM gallery
(workdir/gallery/*.png, workdir/gallery.png). With --export_dir (and
--config.eval.wsol.eval_size=224, the reference's frame) it also writes both splits' WSOL score
maps, metadata and PxAP masks in the reference evaluator's layout (camjax/evaluation/export.py).
--config.eval.method=grad_cam (any name of camjax.explain.METHODS, at --config.eval.layer, with
its options in --config.eval.options.grad_cam) scores and draws that method's maps instead of
CAM; --config.eval.faithfulness.enabled=True adds Average Drop, Increase in Confidence,
Deletion, Insertion and the pointing game on the test split.
"""

import functools
import logging
import sys

from absl import app, flags

from camjax import cli, distributed, run_config
from camjax.evaluation import export, report
from camjax.evaluation import run as run_lib

FLAGS = flags.FLAGS
log = logging.getLogger("camjax.evaluate")
flags.DEFINE_string("workdir", None, "Directory of a trained run.", required=True)
flags.DEFINE_string(
    "export_dir",
    None,
    "Also write the validation and test score maps (one .npy per image id) and metadata files "
    "as clovaai/wsolevaluation reads them, under this directory.",
)


def main(argv, from_run: bool):
    del argv
    cli.setup_logging()
    distributed.initialize()
    with cli.user_errors():
        evaluate(FLAGS.config, from_run)


def evaluate(config, from_run: bool) -> None:
    """Evaluates the run in --workdir with `config`: the run's own with overrides when
    `from_run`, else a --config file's (None: none given, and the run saved none)."""
    if config is None:
        config = run_config.load(FLAGS.workdir)  # raises, saying why
    if diffs := run_config.differences(FLAGS.workdir, config):
        if from_run:
            log.info("overrides of the run's saved config: %s", diffs)
        else:
            log.warning("--config differs from the run's saved config: %s", diffs)
    if FLAGS.export_dir:
        export.check_exportable(config)
    report.print_report(run_lib.run_evaluation(config, FLAGS.workdir))
    if FLAGS.export_dir:
        for split, stats in export.export_wsol(config, FLAGS.workdir, FLAGS.export_dir).items():
            log.info(
                "exported %d %s score maps to %s (%.0f images/s)",
                stats["images"],
                split,
                FLAGS.export_dir,
                stats["images_per_second"],
            )


if __name__ == "__main__":
    cli.check_flagfiles(sys.argv)
    from_run = cli.define_config_flag(
        sys.argv, "Config file; default: the one the run saved (workdir/config.json)."
    )
    app.run(functools.partial(main, from_run=from_run), flags_parser=cli.parse_flags)
