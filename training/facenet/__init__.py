"""Embedder training pieces (FaceNet, Schroff et al. 2015): aligned face crops and pairs sets (``crops``),
P x K batches (``samplers``), triplet mining and loss (``triplet``), the model and its checkpoint record
(``model``), one epoch (``epoch``) and validation by the LFW protocol (``validation``). ``train_facenet.py``
wires them into a run."""
from utils.exports import lazy_exports

_EXPORTS = {
    "FaceCrops": "training.facenet.crops", "load_training_crops": "training.facenet.crops",
    "load_pairs_set": "training.facenet.crops",
    "PKBatchSampler": "training.facenet.samplers",
    "TripletLoss": "training.facenet.triplet",
    "build_model": "training.facenet.model", "architecture": "training.facenet.model",
    "train_one_epoch": "training.facenet.epoch",
    "evaluate": "training.facenet.validation",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
