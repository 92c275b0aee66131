"""The synthetic face set: one entry point, ``generate_synthetic_set(out_dir, spec)`` (sizes: ``SyntheticSpec``,
the ``synthetic`` config section).

``generator`` writes the set in the real datasets' formats; ``items`` renders one picture with its own seeded
generator, ``looks`` holds the identity palettes, ``render`` the face model, ``scene`` backgrounds and cameras,
and ``eval`` the checks of a written set (Eigenfaces baseline, contact sheet).
"""
from config import SyntheticSpec
from datasets.synthetic.eval import eigenfaces_baseline, make_contact_sheet
from datasets.synthetic.generator import GENERATOR_VERSION, MANIFEST, generate_synthetic_set, make_pair_folds
from datasets.synthetic.items import identity_look, identity_name

__all__ = ["SyntheticSpec", "generate_synthetic_set", "identity_look", "identity_name", "make_pair_folds",
           "eigenfaces_baseline", "make_contact_sheet", "MANIFEST", "GENERATOR_VERSION"]
