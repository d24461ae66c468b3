"""Localization from CAMs: one box-counting engine for the CAM paper's boxes and the WSOL protocol.

`wsol` counts boxes (Choe et al., CVPR 2020) exactly and fast, on the host max-tree of
`maxtree` (numba, loaded on first use); `boxes` is the CAM paper's heuristic as a rule of that
engine; `pxap` the protocol's PxAP; `wsol_io` reads and writes the reference evaluator's
metadata folders, `wsol_frame` its score-map and mask files and GT boxes at 224x224.
"""

from camjax.localization import boxes, pxap, wsol, wsol_frame, wsol_io
from camjax.localization.boxes import box_from_scoremap

__all__ = ["box_from_scoremap", "boxes", "pxap", "wsol", "wsol_frame", "wsol_io"]
