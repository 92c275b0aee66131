"""Task code of training, one package per model: ``training.mtcnn`` (the detector) and ``training.facenet``
(the embedder). The top-level scripts wire these pieces into stages."""
