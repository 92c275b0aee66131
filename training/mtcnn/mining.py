"""Hard-example mining for stages R and O: the cascade trained so far, run over the training images, hands its
candidates (and the crop regions and integral images it already built) to the sample generator."""
from __future__ import annotations

import numpy as np
import torch

from models.detector import FaceDetector
from training.mtcnn.samples import DetectFn, Mined


def mining_function(detector: FaceDetector, until: str) -> DetectFn:
    """A batched ``DetectFn`` for sample generation: the candidates stage ``until`` hands on, their crop regions
    and each image's integral image (the samples are cut from the tables the cascade already built)."""
    def detect(images: list[np.ndarray]) -> list[Mined]:
        with torch.inference_mode():
            prep = detector.prepare(images)
            cands = detector.pnet_stage(prep)
            if until == "rnet":
                cands = detector.rnet_stage(prep, cands)
            regions, valid = detector.crop_regions(prep, cands)
        out = []
        for i in range(len(images)):
            mine = (cands.image_index == i) & valid
            out.append(Mined(cands.boxes[mine].cpu().numpy(), regions[mine].cpu().numpy(), prep.integral(i)))
        return out
    return detect
