"""Evaluation of a trained run: each module is the one address of its names.

* `evaluator`: `Evaluator` (one compiled step per batch, counts over a split);
* `run`: `restore_evaluator`, `run_evaluation` (what evaluate.py runs: metrics.json and a
  gallery) and `evaluate_variables`;
* `protocol`: the WSOL protocol of Choe et al. (CVPR 2020) applied to a config and a split;
* `faithfulness`: Average Drop, Increase in Confidence, Deletion and Insertion, summed over a
  split with `pointing`, the pointing game;
* `report`: the results as tables on stdout;
* `gallery`: CAM pictures;
* `export`: score maps and metadata in the reference WSOL evaluator's layout.
"""
