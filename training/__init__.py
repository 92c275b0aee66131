"""Task code of training, one package per model: ``training.mtcnn`` (the detector), ``training.facenet`` (the
embedder) and ``training.matching`` (the verification matcher). The top-level scripts wire these pieces into
stages."""
