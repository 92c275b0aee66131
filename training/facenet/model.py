"""The embedder that training builds from the ``facenet`` config section, and the record of it that checkpoints
carry (``models.face_preprocess.EmbedderRecord``: what ``models.system.load_embedder`` rebuilds it from)."""
from __future__ import annotations

from typing import Any

import torch

from config import Config, FaceNetConfig
from models.embedder import Embedder
from models.face_preprocess import AlignSettings, EmbedderRecord
from models.inception_resnet_v1 import load_facenet_weights
from utils.errors import ConfigError


def embedder_record(cfg: FaceNetConfig, align: AlignSettings | None = None) -> EmbedderRecord:
    """The architecture the ``facenet`` section configures (``width`` applies to mobilefacenet only), with the
    face cut ``align`` when given."""
    width = cfg.width if cfg.backbone == "mobilefacenet" else 1.0
    return EmbedderRecord(cfg.backbone, cfg.embedding_size, cfg.input_size, width, cfg.dropout, cfg.standardization,
                          align)


def build_model(cfg: FaceNetConfig, channels_last: bool = False) -> Embedder:
    """The configured embedder (random initialisation, or facenet-pytorch weights from ``cfg.pretrained``), its
    weights in channels-last layout when asked (before any optimizer or DDP wrapper sees them)."""
    model = embedder_record(cfg).build()
    if cfg.pretrained:
        if cfg.backbone != "inception_resnet_v1":
            raise ConfigError("facenet.pretrained: published FaceNet weights fit backbone inception_resnet_v1 only")
        load_facenet_weights(model.backbone, cfg.pretrained)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def architecture(config: Config) -> dict[str, Any]:
    """The ``embedder`` checkpoint entry: the architecture and how its faces were cut (alignment at eval_size,
    scaled to input_size)."""
    a = config.align
    return embedder_record(config.facenet, AlignSettings(a.eval_size, a.margin, a.method)).as_dict()
