"""Networks and inference: P/R/O-Net and the face detector, alignment, embedders, matchers, the gallery and the
whole face-recognition system. The names users call are exported here (README "Use from Python")::

    from models import FaceDetector, FaceRecognitionSystem, align_faces
"""
from utils.exports import lazy_exports

_EXPORTS = {
    "FaceDetector": "models.detector", "DetectorSettings": "models.detector", "Detections": "models.detector",
    "align_faces": "models.alignment",
    "Embedder": "models.embedder", "load_embedder": "models.system",
    "Matcher": "models.matcher", "ThresholdMatcher": "models.matcher", "ClassifierMatcher": "models.matcher",
    "load_matcher": "models.matcher",
    "Gallery": "models.gallery",
    "FaceRecognitionSystem": "models.system", "AlignSettings": "models.face_preprocess",
    "build_net": "models.mtcnn", "load_net": "models.weights",
    "list_entries": "models.zoo", "resolve_entry": "models.zoo", "verify_entry": "models.zoo",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
