"""The embedder that training builds from the ``facenet`` config section, and the checkpoint record that
``models.system.load_embedder`` rebuilds it from."""
from __future__ import annotations

from typing import Any

from config import Config, FaceNetConfig
from models.embedder import Embedder
from models.inception_resnet_v1 import load_facenet_weights
from utils.errors import ConfigError


def build_model(cfg: FaceNetConfig) -> Embedder:
    """The configured embedder (random initialisation, or facenet-pytorch weights from ``cfg.pretrained``)."""
    width = cfg.width if cfg.backbone == "mobilefacenet" else 1.0
    model = Embedder.build(cfg.backbone, embedding_size=cfg.embedding_size, dropout=cfg.dropout,
                           input_size=cfg.input_size, width=width, standardization=cfg.standardization)
    if cfg.pretrained:
        if cfg.backbone != "inception_resnet_v1":
            raise ConfigError("facenet.pretrained: published FaceNet weights fit backbone inception_resnet_v1 only")
        load_facenet_weights(model.backbone, cfg.pretrained)
    return model


def architecture(config: Config) -> dict[str, Any]:
    """The ``embedder`` checkpoint entry: what ``models.system.load_embedder`` rebuilds the model from, and how
    its faces were cut (alignment at eval_size, scaled to input_size)."""
    cfg, a = config.facenet, config.align
    return {"backbone": cfg.backbone, "embedding_size": cfg.embedding_size, "input_size": cfg.input_size,
            "width": cfg.width if cfg.backbone == "mobilefacenet" else 1.0, "dropout": cfg.dropout,
            "standardization": cfg.standardization,
            "align": {"size": a.eval_size, "margin": a.margin, "method": a.method,
                      "margin_at_input_size": a.margin * cfg.input_size / a.eval_size}}
