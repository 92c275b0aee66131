"""Readers and writers of each dataset's own format (WIDER FACE, 5-point lists, CelebA, identity folders, LFW
pairs, FDDB, RecordIO), decoding in worker processes, dataset sources and checks, face alignment of identity
datasets, and the synthetic generator (``datasets.synthetic``)."""
