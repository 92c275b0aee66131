"""MTCNN training pieces (Zhang et al. 2016): sample generation (``samples``), the sample store (``packed``),
hard-example mining (``mining``), the multi-task loss with OHEM (``loss``) and detection evaluation (AP, WIDER
subsets, FDDB, landmark error: ``evaluation``). ``train_mtcnn.py`` wires them into the three stages."""
from utils.exports import lazy_exports

_EXPORTS = {
    "generate_samples": "training.mtcnn.samples", "DetectionItem": "training.mtcnn.samples",
    "LandmarkItem": "training.mtcnn.samples",
    "PackedSamples": "training.mtcnn.packed", "BalancedBatchSampler": "training.mtcnn.packed",
    "mining_function": "training.mtcnn.mining",
    "MTCNNLoss": "training.mtcnn.loss",
    "DetectionEvaluator": "training.mtcnn.evaluation", "CascadeEvaluation": "training.mtcnn.evaluation",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
