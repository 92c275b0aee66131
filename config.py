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

from datasets.synthetic import SyntheticSpec
from models.embedder import STANDARDIZATIONS
from models.matcher import GALLERY_SCORINGS
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
    # Exported ONNX models (python -m deploy.export): pnet/rnet/onet.onnx, embedder.onnx, embedder_int8.onnx + JSON sidecars.
    onnx: str = "{runs_dir}/onnx"


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
    max_crops_per_batch: int = 512  # R-Net crops per forward (O-Net: a quarter): bounds memory; 512 measured fastest on CPU
    backend: str = "torch"  # torch (paths.pnet/rnet/onet) | onnx (the exported files in paths.onnx, on ONNX Runtime)

    def validate(self) -> None:
        if self.backend not in ("torch", "onnx"):
            raise ConfigError(f"config key 'detector.backend': {self.backend!r} is not torch or onnx")
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
    gallery_images_per_identity: int = 4
    distractor_identities: int = 0
    # Identification protocol (open set): this share of the test identities is left out of the gallery, and
    # their probes must be rejected; distractors (MegaFace-style) are extra gallery identities from this
    # identity-folder tree ('' = none), at most distractor_identities of them.
    unknown_fraction: float = 0.25
    distractors: str = ""
    max_probes_per_identity: int = 0  # 0: every image not enrolled is a probe
    # Identification threshold: the stricter of the matcher's own and the one at which about this share of
    # probes of people not in the gallery is accepted (per-comparison FAR 1 - (1 - r)^(1 / gallery embeddings),
    # read off the matcher's validation false-accept curve); 0 uses the matcher's own threshold.
    impostor_accept_target: float = 0.05
    # Inference batching and test-time augmentation.
    detect_batch_images: int = 8
    embed_batch_size: int = 32
    # Embed each face and its mirror image (sum of both, re-normalised). train_matching.py embeds its pairs the
    # same way, so the thresholds it calibrates hold for the embeddings the system compares.
    flip: bool = True
    # How the embedder runs: torch (paths.embedder) | torch_fp16 (half precision on CUDA; fp32 on the CPU) |
    # onnx | onnx_int8 (paths.onnx embedder.onnx / embedder_int8.onnx on ONNX Runtime; python -m deploy.export).
    embedder_backend: str = "torch"

    def validate(self) -> None:
        if self.embedder_backend not in ("torch", "torch_fp16", "onnx", "onnx_int8"):
            raise ConfigError(f"config key 'system.embedder_backend': {self.embedder_backend!r} is not torch, "
                              "torch_fp16, onnx or onnx_int8")
        rates = ("min_detection_recall", "min_verification_accuracy", "min_identification_top1",
                 "max_impostor_accept_rate", "impostor_accept_target")
        if any(not 0.0 <= getattr(self, name) <= 1.0 for name in rates):
            raise ConfigError(f"config keys 'system.{{{', '.join(rates)}}}': each must be in [0, 1]")
        if not 0.0 <= self.unknown_fraction < 1.0:
            raise ConfigError("config key 'system.unknown_fraction': must be in [0, 1)")
        if self.gallery_images_per_identity < 1 or self.distractor_identities < 0 or self.max_probes_per_identity < 0:
            raise ConfigError("config keys 'system.gallery_images_per_identity' >= 1, 'distractor_identities' and "
                              "'max_probes_per_identity' >= 0 required")
        if self.detect_batch_images < 1 or self.embed_batch_size < 1:
            raise ConfigError("config keys 'system.detect_batch_images' and 'system.embed_batch_size' must be >= 1")


@dataclass
class MatchingConfig:
    """Verification matcher (train_matching.py): a threshold chosen by k-fold CV on validation pairs and/or a
    calibrated classifier on pair features; saved as paths.matcher beside the embedder checkpoint."""

    method: str = "both"  # threshold | classifier | both (fit each, compare on the same folds, keep the better)
    metric: str = "cosine"  # threshold matcher: cosine (same when >= threshold) | euclidean (same when <=)
    folds: int = 0  # 0: the pairs file's folds (10 for LFW View 2; a one-fold file is cut into 10 blocks)
    far_targets: tuple[float, ...] = (1e-2, 1e-3)  # report the thresholds and TAR at these false-accept rates
    classifier: str = "logistic"  # logistic | linear_svm (scikit-learn, on |a-b|, a*b, cosine, distance)
    classifier_c: float = 0.0  # regularisation strength; 0: chosen by identity-disjoint cross-validation
    calibration: str = "sigmoid"  # sigmoid (Platt) | isotonic
    calibration_folds: int = 5  # identity-disjoint folds for calibration and the choice of C
    pairs_per_identity: int = 20  # same-person pairs per identity (as many different-person pairs in all)
    identities: str = ""  # identity folders the classifier's pairs come from; '' = paths.val_images
    # Open-set calibration: galleries of half the validation identities (system.gallery_images_per_identity
    # images each) probed by the other half, this many times; sets the identification threshold. 0 = off.
    open_set_rounds: int = 20
    # How a gallery identity with several photos is scored: best (its closest embedding) | template (the
    # re-normalised mean of its embeddings). Stored in the matcher file; the system scores galleries this way.
    gallery_scoring: str = "template"
    embed_batch_size: int = 32

    def validate(self) -> None:
        choices = {"method": ("threshold", "classifier", "both"), "metric": ("cosine", "euclidean"),
                   "gallery_scoring": GALLERY_SCORINGS,
                   "classifier": ("logistic", "linear_svm"), "calibration": ("sigmoid", "isotonic")}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ConfigError(f"config key 'matching.{key}': {getattr(self, key)!r} is not one of {', '.join(allowed)}")
        if self.folds == 1 or self.folds < 0:
            raise ConfigError("config key 'matching.folds': 0 (the pairs file's) or at least 2")
        if not all(0.0 < far < 1.0 for far in self.far_targets):
            raise ConfigError("config key 'matching.far_targets': each must be in (0, 1)")
        if self.open_set_rounds < 0:
            raise ConfigError("config key 'matching.open_set_rounds': must be >= 0")
        if self.classifier_c < 0 or self.calibration_folds < 2 or self.pairs_per_identity < 1 or self.embed_batch_size < 1:
            raise ConfigError("config keys 'matching.classifier_c' >= 0, 'calibration_folds' >= 2, "
                              "'pairs_per_identity' >= 1 and 'embed_batch_size' >= 1 required")


@dataclass
class MTCNNStageConfig:
    """One MTCNN stage (P, R or O): its samples, loss weights, optimizer, schedule and batch shape."""

    size: int = 12  # input side in pixels: 12 (P), 24 (R), 48 (O)
    landmark_head: bool = False  # train a landmark head (O-Net always has one; optional on P and R)
    # Samples (stage P: random crops; stages R and O: mined detections plus these random crops).
    negatives_per_image: int = 50  # random crops anywhere in the image with IoU < iou_negative
    negatives_near_face: int = 5  # per face: crops overlapping it a little (IoU < iou_negative)
    crops_per_face: int = 20  # per face: shifted/scaled crops, kept as positive or part by IoU
    landmark_crops_per_face: int = 10  # per landmark-list face: shifted crops kept at IoU >= iou_positive
    mined_negatives_per_image: int = 50  # stages R/O: at most this many mined negatives per image
    # Multi-task loss (Zhang et al. 2016: P 1/0.5/0.5, R 1/0.5/0.5, O 1/0.5/1).
    cls_weight: float = 1.0
    box_weight: float = 0.5
    landmark_weight: float = 0.5
    # Optimisation.
    epochs: int = 4
    batch_size: int = 384
    steps_per_epoch: int = 0  # 0: as many batches as one pass over the samples takes
    optimizer: str = "adam"  # sgd | adam | adamw
    lr: float = 0.003
    weight_decay: float = 1e-4
    momentum: float = 0.9  # SGD only
    schedule: str = "cosine"  # cosine | step | constant
    warmup_steps: int = 50
    accumulate: int = 1  # gradient accumulation (effective batch = batch_size x accumulate x processes)
    clip_grad_norm: float = 0.0

    def validate(self) -> None:
        if self.size not in (12, 24, 48):
            raise ConfigError("config key 'mtcnn.<stage>.size': must be 12, 24 or 48")
        if self.batch_size < 7 or self.epochs < 0 or self.accumulate < 1:
            raise ConfigError("config keys 'mtcnn.<stage>': batch_size >= 7, epochs >= 0, accumulate >= 1 required")


@dataclass
class MTCNNConfig:
    """MTCNN training (train_mtcnn.py). Defaults: the synthetic preset (P, R, O in about 10 minutes on 2 cores);
    ``configs/mtcnn_wider.json`` is the real-data preset."""

    pnet: MTCNNStageConfig = field(default_factory=lambda: MTCNNStageConfig(
        size=12, landmark_head=True, epochs=16, batch_size=512, lr=0.003, landmark_weight=0.5))
    rnet: MTCNNStageConfig = field(default_factory=lambda: MTCNNStageConfig(
        size=24, landmark_head=True, negatives_per_image=20, crops_per_face=10, landmark_crops_per_face=5, epochs=3,
        batch_size=256, lr=0.002, landmark_weight=0.5))
    onet: MTCNNStageConfig = field(default_factory=lambda: MTCNNStageConfig(
        size=48, landmark_head=True, negatives_per_image=10, crops_per_face=10, landmark_crops_per_face=5,
        epochs=3, steps_per_epoch=300, batch_size=128, lr=0.002, landmark_weight=1.0))
    # Sample labels by IoU with the nearest face (Zhang et al. 2016).
    iou_negative: float = 0.3  # below: negative
    iou_part: float = 0.4  # from here up to iou_positive: part face
    iou_positive: float = 0.65  # from here: positive (and the floor for landmark crops)
    min_face_size: float = 20.0  # faces whose longer side is smaller are not sampled (nor mined as ground truth)
    mirror: bool = True  # mirror half of the random and landmark crops (left/right points swapped)
    landmark_max_rotation: float = 15.0  # degrees; landmark crops rotated uniformly within +-this
    shard_images: int = 64  # images per packed shard (one worker task)
    # Batches balanced by sample type, neg : pos : part : landmark.
    batch_ratio: tuple[float, float, float, float] = (3.0, 1.0, 1.0, 2.0)
    ohem_ratio: float = 0.7  # online hard example mining: keep the hardest 70% of classification losses
    jitter: float = 0.2  # training-time brightness/contrast jitter (0 = off)
    occlusion: float = 0.25  # chance that a positive/part crop gets a random occluder while training (0 = off)
    blur: float = 0.2  # chance of a Gaussian blur on any training crop (0 = off)
    # Hard-example mining for R and O (the earlier stages run with these low thresholds).
    mining_thresholds: tuple[float, float] = (0.4, 0.5)  # P-Net, R-Net score thresholds while mining
    mining_batch_images: int = 8  # images per batched detector call
    # Data: the validation split. 0 = WIDER_val of paths.wider_face; N > 0 = every Nth image of the train
    # annotation file (and every Nth face of landmarks_train, when landmarks_test is the same file).
    holdout_every: int = 0
    train_fraction_of_images: float = 1.0  # use this share of the training images (quick experiments)
    # Evaluation.
    eval_iou: float = 0.5
    eval_max_images: int = 0  # 0: the whole validation split
    eval_batch_images: int = 8
    eval_score_floor: float = 0.05  # O-Net ranks faces down to this score for AP (precision/recall: detector threshold)

    def validate(self) -> None:
        if not 0.0 < self.iou_negative <= self.iou_part < self.iou_positive <= 1.0:
            raise ConfigError("config keys 'mtcnn.iou_*': need 0 < iou_negative <= iou_part < iou_positive <= 1")
        if not 0.0 < self.ohem_ratio <= 1.0:
            raise ConfigError("config key 'mtcnn.ohem_ratio': must be in (0, 1]")
        if any(r < 0 for r in self.batch_ratio) or sum(self.batch_ratio[:3]) <= 0:
            raise ConfigError("config key 'mtcnn.batch_ratio': needs non-negative values and some face/non-face share")
        if self.holdout_every < 0 or not 0.0 < self.train_fraction_of_images <= 1.0:
            raise ConfigError("config keys 'mtcnn.holdout_every' >= 0 and 'mtcnn.train_fraction_of_images' in (0, 1]")


@dataclass
class AlignConfig:
    """Face alignment of identity datasets (``prepare_training_data.py --align NAME``) with the detector that
    ``paths.pnet/rnet/onet`` name (the trained cascade, or a folder of the original weights)."""

    train_size: int = 182  # side of the crops random-crop training reads
    eval_size: int = 160  # side of the crops of evaluation sets (pairs files, held-out identities)
    # Context pixels at eval_size (0: the ArcFace framing); train crops show the same framing plus
    # (train_size - eval_size) / 2 pixels each side, so their centre crop is the evaluation crop.
    # The system (models/system.py) cuts faces with these same settings, as the embedder saw them in training.
    margin: float = 0.0
    method: str = "similarity"  # similarity (5-point alignment) | box
    select: str = "largest"  # largest | central: the face kept when a photo shows several
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)  # P/R/O-Net thresholds while aligning
    batch_images: int = 16  # photos per batched detector call
    jpeg_quality: int = 95
    # Hold out this many identities (drawn by runtime.seed) as an evaluation split in the LFW layout with a
    # View-2 pairs file of holdout_folds folds (identity-disjoint) of holdout_pairs_per_fold same + as many
    # different pairs; 0 = no split (datasets that come with their own pairs file).
    holdout_identities: int = 0
    holdout_folds: int = 10
    holdout_pairs_per_fold: int = 100

    def validate(self) -> None:
        if self.eval_size < 16 or self.train_size < self.eval_size:
            raise ConfigError("config keys 'align.train_size' >= 'align.eval_size' >= 16 required")
        if not 0.0 <= self.margin < self.eval_size:
            raise ConfigError("config key 'align.margin': must be in [0, eval_size)")
        if self.method not in ("similarity", "box") or self.select not in ("largest", "central"):
            raise ConfigError("config keys 'align.method' (similarity|box) and 'align.select' (largest|central)")
        if not all(0.0 <= t <= 1.0 for t in self.thresholds):
            raise ConfigError("config key 'align.thresholds': each must be in [0, 1]")
        if self.batch_images < 1 or not 1 <= self.jpeg_quality <= 100:
            raise ConfigError("config keys 'align.batch_images' >= 1 and 'align.jpeg_quality' in 1..100 required")
        if self.holdout_identities < 0 or self.holdout_folds < 2 or self.holdout_pairs_per_fold < 1:
            raise ConfigError("config keys 'align.holdout_identities' >= 0, 'holdout_folds' >= 2, "
                              "'holdout_pairs_per_fold' >= 1 required")


@dataclass
class FaceNetConfig:
    """Triplet-loss embedder training (train_facenet.py). Defaults: the synthetic preset (MobileFaceNet x0.5 at
    64 px, per-image standardization, 660 steps of 32 x 4 faces, margin 0.3: about 8 minutes on 2 cores); ``configs/facenet_real.json`` (the
    guide's hyperparameters, Inception-ResNet-v1 at 160 px) and ``configs/facenet_celeba.json`` are the
    real-data presets."""

    # Model.
    backbone: str = "mobilefacenet"  # mobilefacenet (light, CPU) | inception_resnet_v1 (FaceNet, 160 px)
    embedding_size: int = 128
    input_size: int = 64  # the network's input side; aligned crops are scaled by input_size / align.eval_size
    width: float = 0.5  # mobilefacenet channel multiplier
    dropout: float = 0.0
    # Input standardization: fixed ((x - 127.5) / 128, as FaceNet's published weights expect) | per_image (each
    # face's own mean and std, FaceNet's prewhitening: dark or washed-out photos look alike to the network).
    standardization: str = "per_image"
    pretrained: str = ""  # facenet-pytorch InceptionResnetV1 state_dict to start from (fine-tuning); '' = random init
    # Data, as prepare_training_data.py --align writes it ({data_root}, {runs_dir} and {aligned} expand).
    train_images: str = "{aligned}/train"  # identity folders of align.train_size crops
    val_pairs: str = "{aligned}/lfw_val/pairs.txt"  # LFW View-2 pairs file (its header sets the folds)
    val_images: str = "{aligned}/lfw_val/images"  # align.eval_size crops in the LFW layout
    preload: bool = True  # decode every crop once into memory (small sets); false: stream from disk in workers
    # Batches: P identities x K images (the sampler), epochs of one pass over the identities unless set.
    identities_per_batch: int = 32
    images_per_identity: int = 4
    batches_per_epoch: int = 22  # steps per epoch (the preset's compute budget: 30 x 22 steps); 0 = one pass over the identities
    small_identities: str = "replace"  # identities with 2..K-1 images: replace (repeat images) | skip
    # Augmentation: random crop (train_size -> eval_size framing), horizontal flip, colour jitter strength.
    random_crop: bool = True
    flip: bool = True
    color_jitter: float = 0.2
    # Triplet loss (FaceNet: margin 0.2 on squared distances of unit vectors; the guide: 0.2-0.5, "0.5+").
    margin: float = 0.3
    mining: str = "semi_hard"  # semi_hard | batch_hard | batch_all
    squared: bool = True
    # Optimisation.
    epochs: int = 30
    optimizer: str = "adam"  # adam | adamw | sgd
    lr: float = 0.002
    weight_decay: float = 5e-4
    momentum: float = 0.9
    schedule: str = "cosine"  # cosine | step | constant
    warmup_steps: int = 30
    accumulate: int = 1  # gradient accumulation over this many P x K batches (the guide's answer to OOM)
    clip_grad_norm: float = 0.0
    # Validation (LFW protocol on the pairs file, every val_every epochs) and early stopping.
    val_every: int = 1
    val_flip: bool = False  # horizontal-flip test-time augmentation
    val_batch_size: int = 128
    val_loss_batches: int = 20  # P x K batches of the pairs' identities for the validation triplet loss
    far_target: float = 1e-3
    early_stopping_patience: int = 0  # stop after this many validations without a better accuracy; 0 = never

    def validate(self) -> None:
        if self.backbone not in ("mobilefacenet", "inception_resnet_v1"):
            raise ConfigError(f"config key 'facenet.backbone': {self.backbone!r} is not mobilefacenet or inception_resnet_v1")
        if self.standardization not in STANDARDIZATIONS:
            raise ConfigError(f"config key 'facenet.standardization': {self.standardization!r} is not one of "
                              f"{', '.join(STANDARDIZATIONS)}")
        if self.pretrained and self.standardization != "fixed":
            raise ConfigError("config key 'facenet.standardization': published FaceNet weights expect 'fixed'")
        if self.mining not in ("semi_hard", "batch_hard", "batch_all"):
            raise ConfigError(f"config key 'facenet.mining': {self.mining!r} is not semi_hard, batch_hard or batch_all")
        if not 0.0 < self.margin <= 1.0:
            raise ConfigError("config key 'facenet.margin': must be in (0, 1]")
        if self.identities_per_batch < 2 or self.images_per_identity < 2:
            raise ConfigError("config keys 'facenet.identities_per_batch' and 'images_per_identity' must be >= 2")
        if self.small_identities not in ("replace", "skip"):
            raise ConfigError("config key 'facenet.small_identities': replace or skip")
        if self.input_size < 16 or self.embedding_size < 1 or not 0.0 <= self.dropout < 1.0:
            raise ConfigError("config keys 'facenet.input_size' >= 16, 'embedding_size' >= 1, 'dropout' in [0, 1)")
        if self.epochs < 0 or self.accumulate < 1 or self.val_every < 1 or self.batches_per_epoch < 0:
            raise ConfigError("config keys 'facenet.epochs' >= 0, 'accumulate' >= 1, 'val_every' >= 1, "
                              "'batches_per_epoch' >= 0 required")
        if self.color_jitter < 0 or self.val_batch_size < 1 or self.val_loss_batches < 0 or self.early_stopping_patience < 0:
            raise ConfigError("config keys 'facenet.color_jitter', 'val_loss_batches', 'early_stopping_patience' >= 0 "
                              "and 'val_batch_size' >= 1 required")
        if not 0.0 < self.far_target < 1.0:
            raise ConfigError("config key 'facenet.far_target': must be in (0, 1)")


@dataclass
class Config:
    """The whole toolkit configuration."""

    paths: PathsConfig = field(default_factory=PathsConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    synthetic: SyntheticSpec = field(default_factory=SyntheticSpec)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    system: SystemConfig = field(default_factory=SystemConfig)
    mtcnn: MTCNNConfig = field(default_factory=MTCNNConfig)
    matching: MatchingConfig = field(default_factory=MatchingConfig)
    align: AlignConfig = field(default_factory=AlignConfig)
    facenet: FaceNetConfig = field(default_factory=FaceNetConfig)

    def path(self, name: str) -> Path:
        """The path ``paths.<name>`` with ``{data_root}`` and ``{runs_dir}`` expanded."""
        raw = getattr(self.paths, name)
        return Path(raw.format(data_root=self.paths.data_root, runs_dir=self.paths.runs_dir))

    def facenet_path(self, name: str) -> Path:
        """The path ``facenet.<name>`` with ``{data_root}``, ``{runs_dir}`` and ``{aligned}`` expanded."""
        raw = getattr(self.facenet, name)
        return Path(raw.format(data_root=self.paths.data_root, runs_dir=self.paths.runs_dir, aligned=self.path("aligned")))


def load_config(config_file: str | Path | None = None, set_items: list[str] | None = None) -> Config:
    """Defaults, then the override file, then ``--set`` items; every key and value validated."""
    config = Config()
    if config_file is not None:
        config = apply_overrides(config, read_override_file(config_file))
    if set_items:
        config = apply_overrides(config, parse_set_options(set_items))
    return config
