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
from ml_collections import config_flags

from camjax import checkpoint, experiment
from camjax.evaluation import export, report
from camjax.evaluation import run as run_lib
from camjax.train import distributed

FLAGS = flags.FLAGS
log = logging.getLogger("camjax.evaluate")
flags.DEFINE_string("workdir", None, "Directory of a trained run.", required=True)
flags.DEFINE_string(
    "export_dir",
    None,
    "Also write the validation and test score maps (one .npy per image id) and metadata files "
    "as clovaai/wsolevaluation reads them, under this directory.",
)


def define_config_flag(argv: list[str]) -> bool:
    """Defines --config before absl parses argv: the config file given, else the config the run
    in --workdir saved, so that --config.x=... overrides either. Returns whether it is the
    run's. (Override flags are made from a config's fields, so the run's config is read
    before the flags are parsed: --workdir is looked up in argv here.)"""
    args = argv[1:]
    gives_file = any(
        a in ("--config", "-config") or a.startswith(("--config=", "-config=")) for a in args
    )
    workdir = None
    for i, a in enumerate(args):
        name, eq, value = a.lstrip("-").partition("=")
        if name == "workdir":
            workdir = value if eq else (args[i + 1] if i + 1 < len(args) else None)
    saved = None
    if not gives_file and workdir:
        try:
            saved = checkpoint.load_run_config(workdir)
        except checkpoint.CheckpointError as e:  # missing or unreadable: said before any flag
            print(f"error: {e}", file=sys.stderr)
            sys.exit(1)
    help_text = "Config file; default: the one the run saved (workdir/config.json)."
    if saved is None:
        config_flags.DEFINE_config_file("config", None, help_text, lock_config=True)
    else:
        with experiment.config_override_errors(argv):  # it applies the overrides now
            config_flags.DEFINE_config_dict("config", saved, help_text, lock_config=True)
    return saved is not None


def main(argv, run_config: bool):
    del argv
    experiment.setup_logging()
    distributed.initialize()
    with experiment.user_errors():
        evaluate(FLAGS.config, run_config)


def evaluate(config, run_config: bool) -> None:
    """Evaluates the run in --workdir with `config`: the run's own with overrides when
    `run_config`, else a --config file's."""
    if diffs := checkpoint.run_config_differences(FLAGS.workdir, config):
        if run_config:
            log.info("overrides of the run's saved config: %s", diffs)
        else:
            log.warning("--config differs from the run's saved config: %s", diffs)
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
    run_config = define_config_flag(sys.argv)
    app.run(functools.partial(main, run_config=run_config), flags_parser=experiment.parse_flags)
