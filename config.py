"""Every path and hyperparameter of the toolkit, as typed dataclasses, one section per stage.

Scripts build a ``Config`` with ``load_config(file, set_items)``: defaults below, then a JSON or Python
override file (``--config FILE``), then ``--set section.key=value`` items. Unknown keys and wrong types
are one-line errors. The defaults train on the built-in synthetic set (``prepare_training_data.py``
writes it); point the ``paths`` section at real datasets to train on them (README: "Real datasets").

Paths may use ``{data_root}`` and ``{runs_dir}``; ``Config.path(name)`` expands them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from utils.config_io import apply_overrides, parse_set_options, read_override_file
from utils.errors import ConfigError


@dataclass
class PathsConfig:
    """Where data is read and where models and reports are written."""

    data_root: str = "training_data"
    runs_dir: str = "runs"
    synthetic: str = "{data_root}/synthetic_faces"
    # Detection data in the WIDER FACE layout (WIDER_train/, WIDER_val/, wider_face_split/).
    wider_face: str = "{data_root}/synthetic_faces"
    # 5-point landmark lists in the lfw_5590 format (train for MTCNN samples, test for landmark error).
    landmarks_train: str = "{data_root}/synthetic_faces/landmarks/landmarks_train.txt"
    landmarks_test: str = "{data_root}/synthetic_faces/landmarks/landmarks_test.txt"
    # Optional CelebA folder (list_bbox_celeba.txt, list_landmarks_celeba.txt, img_celeba/) for landmarks.
    celeba: str = "{data_root}/CelebA"
    # Identity folders of unaligned photos (VGGFace2 shape) and where their aligned crops go.
    identities: str = "{data_root}/synthetic_faces/identities"
    aligned: str = "{data_root}/aligned/synthetic"
    # Pairs sets in the LFW layout (images/<Name>/<Name>_NNNN.jpg + pairs.txt).
    val_pairs: str = "{data_root}/synthetic_faces/lfw_val/pairs.txt"
    val_images: str = "{data_root}/synthetic_faces/lfw_val/images"
    test_pairs: str = "{data_root}/synthetic_faces/lfw_test/pairs.txt"
    test_images: str = "{data_root}/synthetic_faces/lfw_test/images"
    # Real datasets fetched or placed by prepare_training_data.py.
    lfw: str = "{data_root}/lfw"
    vggface2: str = "{data_root}/VGGFace2"
    # Model files the system uses: our trained checkpoints by default; point them at the original
    # MTCNN weights (pnet.pt, rnet.pt, onet.pt) to use those instead.
    pnet: str = "{runs_dir}/mtcnn/pnet/best.pt"
    rnet: str = "{runs_dir}/mtcnn/rnet/best.pt"
    onet: str = "{runs_dir}/mtcnn/onet/best.pt"
    embedder: str = "{runs_dir}/facenet/best.pt"
    matcher: str = "{runs_dir}/facenet/matcher.json"
    gallery: str = "{runs_dir}/system/gallery.pt"


@dataclass
class RuntimeConfig:
    """Device, reproducibility and data-loading settings shared by every script."""

    device: str = "auto"  # auto | cpu | cuda | cuda:N
    seed: int = 0
    workers: int = 2
    amp: bool = True  # mixed precision on CUDA (ignored on CPU)
    strict: bool = False  # stop at the first bad input instead of skipping and counting it
    deterministic: bool = False  # cudnn deterministic kernels (slower)

    def validate(self) -> None:
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ConfigError(f"config key 'runtime.device': {self.device!r} is not auto, cpu, cuda or cuda:N")
        if self.workers < 0:
            raise ConfigError("config key 'runtime.workers': must be >= 0")


@dataclass
class DetectorConfig:
    """MTCNN cascade inference settings (Zhang et al. 2016 defaults)."""

    min_face_size: float = 20.0
    scale_factor: float = 0.709
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)
    nms_pnet_scale: float = 0.5  # NMS within one pyramid scale
    nms_pnet: float = 0.7  # NMS across scales
    nms_rnet: float = 0.7
    nms_onet: float = 0.7  # "min" overlap at the output stage
    fp16: bool = False  # half precision on CUDA
    max_crops_per_batch: int = 4096  # bounds memory on large images

    def validate(self) -> None:
        if self.min_face_size < 12:
            raise ConfigError("config key 'detector.min_face_size': must be >= 12 (P-Net's input size)")
        if not 0.0 < self.scale_factor < 1.0:
            raise ConfigError("config key 'detector.scale_factor': must be between 0 and 1")
        if not all(0.0 <= t <= 1.0 for t in self.thresholds):
            raise ConfigError("config key 'detector.thresholds': each must be in [0, 1]")


@dataclass
class SystemConfig:
    """End-to-end check (test_system.py): floors each metric must reach, else a non-zero exit."""

    min_detection_recall: float = 0.95
    min_verification_accuracy: float = 0.95
    min_identification_top1: float = 0.90
    max_impostor_accept_rate: float = 0.05
    gallery_images_per_identity: int = 2
    distractor_identities: int = 0


@dataclass
class Config:
    """The whole toolkit configuration."""

    paths: PathsConfig = field(default_factory=PathsConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    system: SystemConfig = field(default_factory=SystemConfig)

    def path(self, name: str) -> Path:
        """The path ``paths.<name>`` with ``{data_root}`` and ``{runs_dir}`` expanded."""
        raw = getattr(self.paths, name)
        return Path(raw.format(data_root=self.paths.data_root, runs_dir=self.paths.runs_dir))


def load_config(config_file: str | Path | None = None, set_items: list[str] | None = None) -> Config:
    """Defaults, then the override file, then ``--set`` items; every key and value validated."""
    config = Config()
    if config_file is not None:
        config = apply_overrides(config, read_override_file(config_file))
    if set_items:
        config = apply_overrides(config, parse_set_options(set_items))
    return config
