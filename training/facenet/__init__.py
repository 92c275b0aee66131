"""Embedder training pieces: aligned face crops and pairs sets (``crops``), P x K batches (``samplers``), triplet
mining and loss (``triplet``), the model and its checkpoint record (``model``), one epoch (``epoch``) and
validation by the LFW protocol (``validation``)."""
