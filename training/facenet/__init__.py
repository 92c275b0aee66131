"""Embedder training pieces: aligned face crops and pairs sets (``crops``), on-device augmentation
(``augment``), P x K batches (``samplers``), the losses: triplet mining and loss (FaceNet, Schroff et al. 2015;
``triplet``) and ArcFace/CosFace margin heads (``margin``), the model and its checkpoint record (``model``), the
engine task (``task``) and validation by the LFW protocol (``validation``). ``train_facenet.py`` wires them into
a run."""
from utils.exports import lazy_exports

_EXPORTS = {
    "FaceCrops": "training.facenet.crops", "load_training_crops": "training.facenet.crops",
    "load_pairs_set": "training.facenet.crops",
    "PKBatchSampler": "training.facenet.samplers",
    "TripletLoss": "training.facenet.triplet",
    "build_model": "training.facenet.model", "architecture": "training.facenet.model",
    "MarginHead": "training.facenet.margin",
    "AugmentSettings": "training.facenet.augment", "augment": "training.facenet.augment",
    "evaluate": "training.facenet.validation",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
