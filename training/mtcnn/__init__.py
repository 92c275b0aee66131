"""MTCNN training pieces: sample generation (``samples``), the sample store (``packed``), hard-example mining
(``mining``), the multi-task loss with OHEM (``loss``) and detection evaluation (``evaluation``)."""
