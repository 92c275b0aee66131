"""Networks and inference wrappers: P/R/O-Net, the face detector, embedders and matchers."""
