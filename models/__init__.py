"""Networks and inference wrappers: P/R/O-Net, the face detector, alignment, embedders, matchers, the gallery and
the whole system."""
