"""Deployment: ONNX export of the four nets, int8 quantization of the embedder, and their checks against PyTorch
(``python -m deploy.export``; needs ``requirements-export.txt``); the model zoo's packaging of a training run
into ``weights/<name>/`` (``python -m deploy.package``) and its evaluation on your data (``python -m
deploy.evaluate``); the end-to-end system check behind ``test_system.py`` (``system_check``)."""
from utils.exports import lazy_exports

_EXPORTS = {"export_embedder": "deploy.export", "export_embedder_int8": "deploy.export",
            "export_mtcnn_net": "deploy.export"}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
