"""The synthetic face set generator: one entry point, ``generate_synthetic_set(out_dir, spec)``.

``generator`` writes the set in the real datasets' formats; ``items`` holds the spec and per-picture
seeding, ``looks`` the identity palettes, ``render`` the face model, ``scene`` backgrounds and cameras, and
``eval`` the checks of a written set (Eigenfaces baseline, contact sheet).
"""
from datasets.synthetic.generator import (
                                          GENERATOR_VERSION,
                                          MANIFEST,
                                          SyntheticSpec,
                                          eigenfaces_baseline,
                                          generate_synthetic_set,
                                          identity_look,
                                          identity_name,
                                          make_contact_sheet,
                                          make_pair_folds,
)

__all__ = ["SyntheticSpec", "generate_synthetic_set", "identity_look", "identity_name", "make_pair_folds",
           "eigenfaces_baseline", "make_contact_sheet", "MANIFEST", "GENERATOR_VERSION"]
