"""Every path and hyperparameter of the toolkit, as typed dataclasses, one section per stage: plain data.

Scripts build a ``Config`` with ``load_config(file, set_items)``: defaults below, then a JSON or Python
override file (``--config FILE``), then ``--set section.key=value`` items. Unknown keys, wrong types and
values outside a key's declared range are one-line errors, raised before anything is read or written. The
defaults train on the built-in synthetic set (``prepare_training_data.py`` writes it); point the ``paths``
section at real datasets to train on them (README: "Real datasets").

Each set of allowed string values is declared once below as a ``Literal`` type, which the modules that act
on the value import from here; each numeric or list key's range is declared beside it as
``Annotated[type, check]`` (``utils.config_io``). This module imports only the standard library and
``utils``. Paths may use ``{data_root}`` and ``{runs_dir}``; ``Config.path(name)`` expands them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

from utils.config_io import (
    Check,
    above,
    apply_overrides,
    at_least,
    between,
    check_values,
    each,
    non_empty,
    one_of,
    parse_set_options,
    read_override_file,
)
from utils.errors import ConfigError

# --- allowed values: each set declared once; models, datasets and training import these --------------------
DetectorBackend = Literal["torch", "onnx"]  # PyTorch modules, or the exported files on ONNX Runtime
EmbedderBackend = Literal["torch", "torch_fp16", "onnx", "onnx_int8"]
MatchingMethod = Literal["threshold", "classifier", "both"]
ThresholdMetric = Literal["cosine", "euclidean"]  # cosine: same when >= threshold; euclidean: same when <=
Classifier = Literal["logistic", "linear_svm"]
Calibration = Literal["sigmoid", "isotonic"]
GalleryScoring = Literal["best", "template"]  # an identity's score: its best embedding | its mean embedding
Optimizer = Literal["sgd", "adam", "adamw"]
Schedule = Literal["cosine", "step", "constant"]
AlignMethod = Literal["similarity", "box"]  # 5-point similarity transform | the detection box
FaceSelection = Literal["largest", "central"]  # which face of a photo is its main face
Backbone = Literal["mobilefacenet", "inception_resnet_v1"]
Standardization = Literal["fixed", "per_image"]
TripletMining = Literal["semi_hard", "batch_hard", "batch_all"]
# triplet: FaceNet's loss on P x K batches | arcface / cosface: softmax over the training identities with an
# additive angular / additive cosine margin (a head trained beside the embedder, left out of it afterwards)
EmbedderLoss = Literal["triplet", "arcface", "cosface"]
SmallIdentities = Literal["replace", "skip"]

# --- ranges shared by many keys (a range used once sits beside its field) -------------------------------------
Count = Annotated[int, at_least(0)]
PositiveCount = Annotated[int, at_least(1)]
NonNegative = Annotated[float, at_least(0)]
Positive = Annotated[float, above(0)]
Probability = Annotated[float, between(0, 1)]
OpenProbability = Annotated[float, between(0, 1, open_low=True, open_high=True)]
Overlap = Annotated[float, between(0, 1, open_low=True)]  # an IoU threshold
Momentum = Annotated[float, between(0, 1, open_high=True)]
Thresholds = Annotated[tuple[float, float, float], each(between(0, 1))]  # P-, R-, O-Net score thresholds
# The range every consumer of a seed accepts: scikit-learn's random_state and NumPy's legacy seeding stop at
# 2**32 - 1 (torch.manual_seed goes to 2**64 - 1, so the derived per-stage seeds stay valid as well).
Seed = Annotated[int, between(0, 2**32 - 1)]
SizeRange = Annotated[tuple[int, int], Check("two sizes with 1 <= low <= high", lambda v: 1 <= v[0] <= v[1])]


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
    # Exported ONNX models (python -m deploy.export): pnet/rnet/onet.onnx, embedder.onnx, embedder_int8.onnx and
    # their JSON sidecars.
    onnx: str = "{runs_dir}/onnx"


@dataclass
class RuntimeConfig:
    """Device, reproducibility and data-loading settings shared by every script."""

    device: Annotated[str, Check("auto, cpu, cuda or cuda:N", lambda v: v in ("auto", "cpu", "cuda")
                                 or v.startswith("cuda:"))] = "auto"
    seed: Seed = 0
    workers: Count = 2
    amp: bool = True  # mixed precision on CUDA (ignored on CPU)
    strict: bool = False  # stop at the first bad input instead of skipping and counting it
    deterministic: bool = False  # cudnn deterministic kernels (slower)
    # torch.compile the embedder's training steps (a one-off compile, about 1-2 minutes on a CPU, then faster
    # steps: `python -m bench.bench_facenet throughput --compile` measures both on your machine)
    compile: bool = False
    # channels-last memory layout for the embedder's training (faster convolutions on some CPUs and on tensor-core
    # GPUs; `python -m bench.bench_facenet throughput --channels-last` measures it on your machine)
    channels_last: bool = False


@dataclass(frozen=True)
class SyntheticSpec:
    """Sizes of the synthetic set (``datasets.synthetic`` writes it). The defaults (750 scenes, 600 x 8 identity
    photos, 80 + 40 x 8 pair-set photos, 2,400 landmark crops) take about 90 seconds with 2 workers on an idle
    2-core machine."""

    seed: Seed = 0
    train_scenes: Count = 600  # WIDER_train pictures
    val_scenes: Count = 150  # WIDER_val pictures
    scene_sizes: Annotated[tuple[tuple[int, int], ...], non_empty, each(
        Check("a (width, height) pair of sides >= 1", lambda v: min(v) >= 1))] = (
        (640, 480), (560, 420), (480, 360), (480, 640), (360, 480))
    max_faces_per_scene: Count = 8
    empty_scene_fraction: Probability = 0.08  # scenes with no face at all
    min_face: Annotated[int, at_least(8)] = 12  # face box height range in scenes, pixels (hairline to chin)
    max_face: PositiveCount = 250
    scene_identities: PositiveCount = 300  # people who appear in scenes
    train_identities: Annotated[int, at_least(2)] = 600  # identities/<id>/ folders (VGGFace2 shape)
    images_per_identity: Annotated[int, at_least(2)] = 8
    identity_width: SizeRange = (180, 260)  # identity photo size ranges, pixels
    identity_height: SizeRange = (200, 300)
    # lfw_val: held-out people, pairs for validation / threshold tuning
    val_identities: Annotated[int, at_least(2)] = 80
    val_images_per_identity: Annotated[int, at_least(2)] = 8
    val_folds: PositiveCount = 10
    val_pairs_per_fold: PositiveCount = 30  # same pairs per fold (and as many different ones)
    test_identities: Annotated[int, at_least(2)] = 40  # lfw_test: other held-out people, for the end-to-end system test
    test_images_per_identity: Annotated[int, at_least(2)] = 8
    test_folds: PositiveCount = 10
    test_pairs_per_fold: PositiveCount = 30
    lfw_image_size: PositiveCount = 160  # square pair-set photos, face roughly centred
    landmark_train: Count = 2000  # landmark crops (lfw_5590 80 px style)
    landmark_test: Count = 400
    landmark_image_size: PositiveCount = 80
    jpeg_quality: Annotated[tuple[int, int], Check("two qualities with 1 <= low <= high <= 100",
                                                   lambda v: 1 <= v[0] <= v[1] <= 100)] = (72, 95)

    def __post_init__(self) -> None:
        check_values(self, "synthetic.")
        self.validate()

    def validate(self) -> None:
        """Refuse sizes that cannot produce a usable set (one line naming the keys)."""
        if self.max_face < self.min_face:
            raise ConfigError(f"config keys 'synthetic.min_face' <= 'synthetic.max_face' required, got "
                              f"{self.min_face}, {self.max_face}")
        for split in ("val", "test"):
            ids, images = getattr(self, f"{split}_identities"), getattr(self, f"{split}_images_per_identity")
            folds, per_fold = getattr(self, f"{split}_folds"), getattr(self, f"{split}_pairs_per_fold")
            if ids < 2 * folds:
                raise ConfigError(f"config keys 'synthetic.{split}_*': need >= 2 identities per fold ({ids} identities "
                                  f"for {folds} folds)")
            smallest = ids // folds
            if smallest * images * (images - 1) // 2 < per_fold:
                raise ConfigError(f"config keys 'synthetic.{split}_*': {per_fold} same pairs per fold need more images "
                                  "or identities per fold")
            if smallest * (smallest - 1) // 2 * images * images < 2 * per_fold:
                raise ConfigError(f"config keys 'synthetic.{split}_*': {per_fold} different pairs per fold need more "
                                  "identities per fold")


@dataclass
class DetectorConfig:
    """MTCNN cascade inference settings (Zhang et al. 2016 defaults)."""

    min_face_size: Annotated[float, at_least(12)] = 20.0  # P-Net's input side is the smallest face it finds
    scale_factor: OpenProbability = 0.709
    thresholds: Thresholds = (0.6, 0.7, 0.7)
    nms_pnet_scale: Probability = 0.5  # NMS within one pyramid scale
    nms_pnet: Probability = 0.7  # NMS across scales
    nms_rnet: Probability = 0.7
    nms_onet: Probability = 0.7  # "min" overlap at the output stage
    fp16: bool = False  # half precision on CUDA
    # R-Net crops per forward (O-Net: a quarter): bounds memory; 512 measured fastest on CPU
    max_crops_per_batch: PositiveCount = 512
    # torch (paths.pnet/rnet/onet) | onnx (the exported files in paths.onnx, on ONNX Runtime)
    backend: DetectorBackend = "torch"


@dataclass
class SystemConfig:
    """End-to-end check (test_system.py): floors each metric must reach, else a non-zero exit."""

    min_detection_recall: Probability = 0.95
    min_verification_accuracy: Probability = 0.95
    min_identification_top1: Probability = 0.90
    max_impostor_accept_rate: Probability = 0.05
    gallery_images_per_identity: PositiveCount = 4
    distractor_identities: Count = 0
    # Identification protocol (open set): this share of the test identities is left out of the gallery, and
    # their probes must be rejected; distractors (MegaFace-style) are extra gallery identities from this
    # identity-folder tree ('' = none), at most distractor_identities of them.
    unknown_fraction: Annotated[float, between(0, 1, open_high=True)] = 0.25
    distractors: str = ""
    max_probes_per_identity: Count = 0  # 0: every image not enrolled is a probe
    # Identification threshold: the stricter of the matcher's own and the one at which about this share of
    # probes of people not in the gallery is accepted (per-comparison FAR 1 - (1 - r)^(1 / gallery embeddings),
    # read off the matcher's validation false-accept curve); 0 uses the matcher's own threshold.
    impostor_accept_target: Probability = 0.05
    # Inference batching and test-time augmentation.
    detect_batch_images: PositiveCount = 8
    embed_batch_size: PositiveCount = 32
    # Embed each face and its mirror image (sum of both, re-normalised). train_matching.py embeds its pairs the
    # same way, so the thresholds it calibrates hold for the embeddings the system compares.
    flip: bool = True
    # How the embedder runs: torch (paths.embedder) | torch_fp16 (half precision on CUDA; fp32 on the CPU) |
    # onnx | onnx_int8 (paths.onnx embedder.onnx / embedder_int8.onnx on ONNX Runtime; python -m deploy.export).
    embedder_backend: EmbedderBackend = "torch"


@dataclass
class MatchingConfig:
    """Verification matcher (train_matching.py): a threshold chosen by k-fold CV on validation pairs and/or a
    calibrated classifier on pair features; saved as paths.matcher beside the embedder checkpoint."""

    method: MatchingMethod = "both"  # fit each, compare on the same folds, keep the simpler unless beaten by > 1 SE
    metric: ThresholdMetric = "cosine"  # the threshold matcher's score
    # 0: the pairs file's folds (10 for LFW View 2; a one-fold file is cut into 10 blocks)
    folds: Annotated[int, Check("that is 0 (the pairs file's folds) or >= 2", lambda v: v == 0 or v >= 2)] = 0
    # report the thresholds and TAR at these false-accept rates
    far_targets: Annotated[tuple[float, ...], non_empty, each(between(0, 1, open_low=True, open_high=True))] = (
        1e-2, 1e-3)
    # The threshold matcher's operating point: 0 = the threshold of best accuracy on the validation pairs; a rate =
    # the threshold at which that share of their different-person pairs is accepted (strict points carry over to
    # other datasets better than the accuracy-optimal one: README "Check the whole system")
    operating_far: Annotated[float, between(0, 1, open_high=True)] = 0.0
    classifier: Classifier = "logistic"  # scikit-learn, on |a-b|, a*b, cosine, distance
    classifier_c: NonNegative = 0.0  # regularisation strength; 0: chosen by identity-disjoint cross-validation
    calibration: Calibration = "sigmoid"  # sigmoid (Platt) | isotonic
    calibration_folds: Annotated[int, at_least(2)] = 5  # identity-disjoint folds for calibration and the choice of C
    pairs_per_identity: PositiveCount = 20  # same-person pairs per identity (as many different-person pairs in all)
    identities: str = ""  # identity folders the classifier's pairs come from; '' = paths.val_images
    # Open-set calibration: galleries of half the validation identities (system.gallery_images_per_identity
    # images each) probed by the other half, this many times; sets the identification threshold. 0 = off.
    open_set_rounds: Count = 20
    # How a gallery identity with several photos is scored: best (its closest embedding) | template (the
    # re-normalised mean of its embeddings). Stored in the matcher file; the system scores galleries this way.
    gallery_scoring: GalleryScoring = "template"
    # Centring: scores are taken after removing the mean embedding of the faces at hand - the tuning images'
    # here, the gallery's in the system once it holds 20+ faces - so that an operating point tuned on one
    # source of photos holds on another (README "Check the whole system"). Stored in the matcher file.
    centring: bool = False
    embed_batch_size: PositiveCount = 32


@dataclass
class MTCNNStageConfig:
    """One MTCNN stage (P, R or O): its samples, loss weights, optimizer, schedule and batch shape."""

    size: Annotated[int, one_of(12, 24, 48)] = 12  # input side in pixels: 12 (P), 24 (R), 48 (O)
    landmark_head: bool = False  # train a landmark head (O-Net always has one; optional on P and R)
    # Samples (stage P: random crops; stages R and O: mined detections plus these random crops).
    negatives_per_image: Count = 50  # random crops anywhere in the image with IoU < iou_negative
    negatives_near_face: Count = 5  # per face: crops overlapping it a little (IoU < iou_negative)
    crops_per_face: Count = 20  # per face: shifted/scaled crops, kept as positive or part by IoU
    landmark_crops_per_face: Count = 10  # per landmark-list face: shifted crops kept at IoU >= iou_positive
    mined_negatives_per_image: Count = 50  # stages R/O: at most this many mined negatives per image
    # Multi-task loss (Zhang et al. 2016: P 1/0.5/0.5, R 1/0.5/0.5, O 1/0.5/1).
    cls_weight: NonNegative = 1.0
    box_weight: NonNegative = 0.5
    landmark_weight: NonNegative = 0.5
    # Optimisation.
    epochs: Count = 4
    batch_size: Annotated[int, at_least(7)] = 384  # room for every sample type in each batch
    steps_per_epoch: Count = 0  # 0: as many batches as one pass over the samples takes
    optimizer: Optimizer = "adam"
    lr: Positive = 0.003
    weight_decay: NonNegative = 1e-4
    momentum: Momentum = 0.9  # SGD only
    schedule: Schedule = "cosine"
    warmup_steps: Count = 50
    accumulate: PositiveCount = 1  # gradient accumulation (effective batch = batch_size x accumulate x processes)
    clip_grad_norm: NonNegative = 0.0


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
    iou_negative: Overlap = 0.3  # below: negative
    iou_part: Overlap = 0.4  # from here up to iou_positive: part face
    iou_positive: Overlap = 0.65  # from here: positive (and the floor for landmark crops)
    min_face_size: NonNegative = 20.0  # faces whose longer side is smaller are not sampled (nor mined as ground truth)
    mirror: bool = True  # mirror half of the random and landmark crops (left/right points swapped)
    landmark_max_rotation: NonNegative = 15.0  # degrees; landmark crops rotated uniformly within +-this
    shard_images: PositiveCount = 64  # images per packed shard (one worker task)
    # Batches balanced by sample type, neg : pos : part : landmark.
    batch_ratio: Annotated[tuple[float, float, float, float], each(at_least(0))] = (3.0, 1.0, 1.0, 2.0)
    ohem_ratio: Overlap = 0.7  # online hard example mining: keep the hardest 70% of classification losses
    jitter: NonNegative = 0.2  # training-time brightness/contrast jitter (0 = off)
    occlusion: Probability = 0.25  # chance that a positive/part crop gets a random occluder while training (0 = off)
    blur: Probability = 0.2  # chance of a Gaussian blur on any training crop (0 = off)
    # Hard-example mining for R and O (the earlier stages run with these low thresholds).
    mining_thresholds: Annotated[tuple[float, float], each(between(0, 1))] = (0.4, 0.5)  # P-Net, R-Net thresholds
    mining_batch_images: PositiveCount = 8  # images per batched detector call
    # Data: the validation split. 0 = WIDER_val of paths.wider_face; N > 0 = every Nth image of the train
    # annotation file (and every Nth face of landmarks_train, when landmarks_test is the same file).
    holdout_every: Count = 0
    train_fraction_of_images: Overlap = 1.0  # use this share of the training images (quick experiments)
    # Evaluation.
    eval_iou: Overlap = 0.5
    eval_max_images: Count = 0  # 0: the whole validation split
    eval_batch_images: PositiveCount = 8
    # O-Net ranks faces down to this score for AP (precision and recall: at the detector's threshold)
    eval_score_floor: Probability = 0.05

    def validate(self) -> None:
        if not self.iou_negative <= self.iou_part < self.iou_positive:
            raise ConfigError("config keys 'mtcnn.iou_*': need 0 < iou_negative <= iou_part < iou_positive <= 1")
        if sum(self.batch_ratio[:3]) <= 0:
            raise ConfigError("config key 'mtcnn.batch_ratio': needs some face/non-face share")


@dataclass
class AlignConfig:
    """Face alignment of identity datasets (``prepare_training_data.py --align NAME``) with the detector that
    ``paths.pnet/rnet/onet`` name (the trained cascade, or a folder of the original weights)."""

    train_size: Annotated[int, at_least(16)] = 182  # side of the crops random-crop training reads
    # side of the crops of evaluation sets (pairs files, held-out identities)
    eval_size: Annotated[int, at_least(16)] = 160
    # Context pixels at eval_size (0: the ArcFace framing); train crops show the same framing plus
    # (train_size - eval_size) / 2 pixels each side, so their centre crop is the evaluation crop.
    # The system (models/system.py) cuts faces with these same settings, as the embedder saw them in training.
    margin: NonNegative = 0.0
    method: AlignMethod = "similarity"
    select: FaceSelection = "largest"  # the face kept when a photo shows several
    thresholds: Thresholds = (0.6, 0.7, 0.7)  # P/R/O-Net thresholds while aligning
    batch_images: PositiveCount = 16  # photos per batched detector call
    jpeg_quality: Annotated[int, between(1, 100)] = 95
    # Hold out this many identities (drawn by runtime.seed) as an evaluation split in the LFW layout with a
    # View-2 pairs file of holdout_folds folds (identity-disjoint) of holdout_pairs_per_fold same + as many
    # different pairs; 0 = no split (datasets that come with their own pairs file).
    holdout_identities: Count = 0
    # Carve this many more identities (the next ones of the same draw, so the held-out people stay as they were)
    # as a validation split val/ in the same layout and pairs format: point facenet.val_pairs/val_images at it
    # and best.pt's epoch is chosen on people that neither train nor give the held-out figure.
    validation_identities: Count = 0
    holdout_folds: Annotated[int, at_least(2)] = 10
    holdout_pairs_per_fold: PositiveCount = 100

    def validate(self) -> None:
        if self.train_size < self.eval_size:
            raise ConfigError("config keys 'align.train_size' >= 'align.eval_size' required")
        if self.margin >= self.eval_size:
            raise ConfigError("config key 'align.margin': must be in [0, eval_size)")


@dataclass
class FaceNetConfig:
    """Triplet-loss embedder training (train_facenet.py). Defaults: the synthetic preset (MobileFaceNet x0.5 at
    64 px, per-image standardization, 660 steps of 32 x 4 faces, margin 0.3: about 8 minutes on 2 cores);
    ``configs/facenet_real.json`` (FaceNet's setting, Inception-ResNet-v1 at 160 px) and
    ``configs/facenet_celeba.json`` are the real-data presets."""

    # Model.
    backbone: Backbone = "mobilefacenet"  # mobilefacenet (light, CPU) | inception_resnet_v1 (FaceNet, 160 px)
    embedding_size: PositiveCount = 128
    # the network's input side; aligned crops are scaled by input_size / align.eval_size
    input_size: Annotated[int, at_least(16)] = 64
    width: Positive = 0.5  # mobilefacenet channel multiplier
    dropout: Annotated[float, between(0, 1, open_high=True)] = 0.0
    # Input standardization: fixed ((x - 127.5) / 128, as FaceNet's published weights expect) | per_image (each
    # face's own mean and std, FaceNet's prewhitening: dark or washed-out photos look alike to the network).
    standardization: Standardization = "per_image"
    pretrained: str = ""  # facenet-pytorch InceptionResnetV1 state_dict to start from (fine-tuning); '' = random init
    # Data, as prepare_training_data.py --align writes it ({data_root}, {runs_dir} and {aligned} expand).
    # identity folders of align.train_size crops: one root or a list of roots (their people kept apart)
    train_images: str | list[str] = "{aligned}/train"
    val_pairs: str = "{aligned}/lfw_val/pairs.txt"  # LFW View-2 pairs file (its header sets the folds)
    val_images: str = "{aligned}/lfw_val/images"  # align.eval_size crops in the LFW layout
    preload: bool = True  # decode every crop once into memory (small sets); false: stream from disk in workers
    # Batches: P identities x K images (the sampler), epochs of one pass over the identities unless set.
    identities_per_batch: Annotated[int, at_least(2)] = 32
    images_per_identity: Annotated[int, at_least(2)] = 4
    # steps per epoch (the preset's compute budget: 30 x 22 steps); 0 = one pass over the identities
    batches_per_epoch: Count = 22
    small_identities: SmallIdentities = "replace"  # identities with 2..K-1 images: replace (repeat images) | skip
    # Augmentation on the device, each drawn per image: random crop (train_size -> eval_size framing), flip,
    # colour jitter strength; zoom in [1 - s, 1 + s] and rotation in [-r, r] degrees; probabilities of a grey copy,
    # a Gaussian blur, down-and-up scaling (low-resolution photos) and one erased rectangle.
    random_crop: bool = True
    flip: bool = True
    color_jitter: NonNegative = 0.2
    random_scale: Annotated[float, between(0, 1, open_high=True)] = 0.0
    random_rotate: Annotated[float, between(0, 90)] = 0.0
    greyscale: Probability = 0.0
    blur: Probability = 0.0
    low_resolution: Probability = 0.0
    random_erase: Probability = 0.0
    # The loss. Margin losses: scale s and margin m (CosFace: cosine minus m; ArcFace: angle plus m radians), the
    # margin ramped up from 0 over the first margin_warmup_steps steps (a fresh network cannot meet it at once);
    # triplet_finetune_epochs > 0 switches to the triplet loss for that many last epochs (margin, then triplet).
    loss: EmbedderLoss = "triplet"
    head_scale: Positive = 30.0
    head_margin: Annotated[float, between(0, 1.5)] = 0.35
    margin_warmup_steps: Count = 0
    triplet_finetune_epochs: Count = 0
    # Triplet loss (Schroff et al. 2015: margin 0.2 on squared distances of unit vectors; up to 1 allowed).
    margin: Overlap = 0.3
    mining: TripletMining = "semi_hard"
    squared: bool = True
    # Optimisation.
    epochs: Count = 30
    optimizer: Optimizer = "adam"
    lr: Positive = 0.002
    weight_decay: NonNegative = 5e-4
    momentum: Momentum = 0.9
    schedule: Schedule = "cosine"
    warmup_steps: Count = 30
    accumulate: PositiveCount = 1  # gradient accumulation over this many P x K batches (more than fit in memory)
    clip_grad_norm: NonNegative = 0.0
    # Weight averaging: validate and save (best.pt, the embedder) an exponential moving average of the weights,
    # updated every optimizer step with this decay (0.999: about the last 1,000 steps); 0 = the trained weights.
    ema_decay: Annotated[float, between(0, 1, open_high=True)] = 0.0
    # Validation (LFW protocol on the pairs file, every val_every epochs) and early stopping.
    val_every: PositiveCount = 1
    val_flip: bool = False  # horizontal-flip test-time augmentation
    val_batch_size: PositiveCount = 128
    val_loss_batches: Count = 20  # P x K batches of the pairs' identities for the validation triplet loss
    far_target: OpenProbability = 1e-3
    early_stopping_patience: Count = 0  # stop after this many validations without a better accuracy; 0 = never

    def validate(self) -> None:
        if self.pretrained and self.standardization != "fixed":
            raise ConfigError("config key 'facenet.standardization': published FaceNet weights expect 'fixed'")
        if self.triplet_finetune_epochs and self.loss == "triplet":
            raise ConfigError("config key 'facenet.triplet_finetune_epochs': needs a margin loss first "
                              "(facenet.loss arcface or cosface)")
        if self.triplet_finetune_epochs >= self.epochs and self.loss != "triplet":
            raise ConfigError(f"config key 'facenet.triplet_finetune_epochs': {self.triplet_finetune_epochs} leaves "
                              f"no epoch of the {self.loss} loss out of facenet.epochs={self.epochs}")
        if isinstance(self.train_images, list) and not self.train_images:
            raise ConfigError("config key 'facenet.train_images': an empty list")

    def margin_epochs(self) -> int:
        """Epochs trained with the margin loss (0 with the triplet loss)."""
        return 0 if self.loss == "triplet" else self.epochs - self.triplet_finetune_epochs


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
        return self._expand(getattr(self.facenet, name))

    def train_roots(self) -> list[Path]:
        """The identity roots of ``facenet.train_images`` (one path or a list), expanded."""
        raw = self.facenet.train_images
        return [self._expand(item) for item in ([raw] if isinstance(raw, str) else raw)]

    def _expand(self, raw: str) -> Path:
        return Path(raw.format(data_root=self.paths.data_root, runs_dir=self.paths.runs_dir,
                               aligned=self.path("aligned")))


def load_config(config_file: str | Path | None = None, set_items: list[str] | None = None) -> Config:
    """Defaults, then the override file, then ``--set`` items; every key and value validated."""
    config = Config()
    if config_file is not None:
        config = apply_overrides(config, read_override_file(config_file))
    if set_items:
        config = apply_overrides(config, parse_set_options(set_items))
    return config
