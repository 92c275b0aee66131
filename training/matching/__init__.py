"""Verification-matcher fitting (stage 3): the validation pairs and identity folders embedded by the system
(``pairs``), the threshold and classifier methods judged on held-out folds with their open-set calibration
(``methods``), and the side-by-side table, plots and report (``report``). ``train_matching.py`` wires them into
a run."""
from utils.exports import lazy_exports

_EXPORTS = {
    "PairSet": "training.matching.pairs", "IdentitySet": "training.matching.pairs",
    "fold_ids_for": "training.matching.pairs", "embed_validation_images": "training.matching.pairs",
    "MethodResult": "training.matching.methods", "fit_methods": "training.matching.methods",
    "choose": "training.matching.methods",
    "side_by_side": "training.matching.report", "write_plots": "training.matching.report",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
