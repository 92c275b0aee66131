"""The face-recognition system: ``FaceDetector`` -> alignment -> embedder -> matcher / gallery, as one object.

``FaceRecognitionSystem.analyse`` runs the stages over a batch of images (paths or arrays) and times each;
``verify`` compares the main faces of two images, ``identify`` names every face of an image against the
gallery (open set: a face too far from everyone enrolled is "unknown"), ``enroll`` adds a person's
photos to the gallery. The main face of a photo is its largest (or most central) detection. Everything
the system needs comes from explicit arguments; :meth:`FaceRecognitionSystem.from_files` builds it from
model paths and :meth:`FaceRecognitionSystem.from_config` from a ``Config``.
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from config import Config
from models.detector import Detections, DetectorSettings, FaceDetector
from models.embedder import Embedder
from models.face_preprocess import (
    AlignSettings,
    EmbedderRecord,
    centre_square,
    cut_faces,
    main_face_order,
    resize_crops,
    select_faces,
)
from models.gallery import Gallery, RebuildReport
from models.matcher import Matcher, load_matcher
from models.onnx_nets import OnnxEmbedder, resolve_onnx
from models.zoo import EMBEDDER_FILE, MATCHER_FILE, entry_file
from utils.checkpoint import load_checkpoint, load_model_state
from utils.device import select_device
from utils.errors import BadInputLog, DataError
from utils.hashing import sha256_file
from utils.images import read_image

PIPELINE_STEPS = ("read", "detect", "align", "embed", "match")
ImageInput = str | Path | np.ndarray


@dataclass
class Face:
    """One detected face: box (x1, y1, x2, y2), detector score, five landmarks, embedding (None: not aligned)."""

    box: np.ndarray
    score: float
    landmarks: np.ndarray | None
    embedding: np.ndarray | None = None


@dataclass
class ImageResult:
    """What the system found in one image: faces (main face first), or the error that made it unusable."""

    source: str
    faces: list[Face] = field(default_factory=list)
    error: str | None = None
    alignment_failures: int = 0

    @property
    def primary(self) -> Face | None:
        """The main face, when it was detected and embedded."""
        if self.faces and self.faces[0].embedding is not None:
            return self.faces[0]
        return None


@dataclass
class VerifyResult:
    """Whether two images show the same person; ``reason`` says why not when a face was missing."""

    same: bool
    score: float | None
    faces_a: int
    faces_b: int
    reason: str = ""


@dataclass
class Identification:
    """One face named against the gallery: the best identity, its score, and whether it was accepted."""

    box: np.ndarray
    name: str | None  # the accepted identity; None = unknown person
    candidate: str | None  # the closest identity, accepted or not (None: empty gallery or no embedding)
    score: float | None
    threshold: float


class StageTimes:
    """Seconds and images per stage, summed over calls; ``per_image`` gives mean seconds per image."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(PIPELINE_STEPS, 0.0)
        self.images = dict.fromkeys(PIPELINE_STEPS, 0)

    @contextlib.contextmanager
    def stage(self, name: str, images: int) -> Iterator[None]:
        """Time the enclosed block as ``images`` images through stage ``name``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start
            self.images[name] += images

    def per_image(self) -> dict[str, float]:
        """Mean seconds per image of each stage that ran."""
        return {name: self.seconds[name] / self.images[name] for name in PIPELINE_STEPS if self.images[name]}

    def reset(self) -> None:
        """Forget the times measured so far."""
        self.__init__()


def read_embedder(path: Path, device: torch.device) -> tuple[Embedder, AlignSettings | None]:
    """An :class:`Embedder` from a toolkit checkpoint (``model``: its state_dict; ``embedder``: its
    :class:`EmbedderRecord`) and how its training faces were cut (the record's ``align``, if any)."""
    state = load_checkpoint(path)
    if not isinstance(state.get("embedder"), dict) or "model" not in state:
        raise DataError(path, "not an embedder checkpoint (needs 'model' and 'embedder' entries; train_facenet.py "
                              "writes them)")
    try:
        record = EmbedderRecord.from_dict(state["embedder"])
        model = record.build()
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(path, f"embedder checkpoint has an incomplete architecture entry ({type(exc).__name__}: "
                              f"{exc})") from None
    load_model_state(model, state["model"], path)
    return model.to(device).eval(), record.align


def open_embedder(path: Path, device: torch.device, fp16: bool = False
                  ) -> tuple[Embedder | OnnxEmbedder, AlignSettings | None, str]:
    """An embedder ready for inference, how its faces were cut, and the SHA-256 matchers and galleries know it by:
    a toolkit checkpoint (half precision on CUDA with ``fp16``; fp32 on the CPU), or a ``.onnx`` file from
    ``python -m deploy.export`` on ONNX Runtime, known by its source checkpoint's SHA-256 (so the same matcher fits)."""
    if path.suffix == ".onnx":
        model = OnnxEmbedder(path, device=device)
        return model, model.record.align, model.source_sha256
    model, recorded = read_embedder(path, device)
    if fp16 and device.type == "cuda":
        model = model.half()
    return model, recorded, sha256_file(path)


def load_embedder(path: str | Path, device: torch.device) -> Embedder:
    """The :class:`Embedder` of a toolkit checkpoint (see :func:`read_embedder`) or of a model-zoo entry, on
    ``device``, in eval mode."""
    return read_embedder(entry_file(path, EMBEDDER_FILE), device)[0]


class FaceRecognitionSystem:
    """Detector, aligner, embedder, matcher and gallery wired together.

    ``detector`` None means the inputs are already aligned face crops (each image is one face, resized to
    the embedder's input). The gallery, when given, must hold embeddings of this embedder (same SHA-256).
    """

    def __init__(self, detector: FaceDetector | None, embedder: Embedder | OnnxEmbedder, embedder_sha256: str, *,
                 matcher: Matcher | None = None, gallery: Gallery | None = None,
                 align: AlignSettings | None = None, detect_batch_images: int = 8, embed_batch_size: int = 32,
                 flip: bool = False, log: BadInputLog | None = None) -> None:
        self.detector = detector
        self.embedder = embedder.eval()
        self.embedder_sha256 = embedder_sha256
        self.matcher = matcher
        self.align = align or AlignSettings()
        self.align_size = self.align.size or embedder.input_size
        self.detect_batch_images = detect_batch_images
        self.embed_batch_size = embed_batch_size
        self.flip = flip
        self.log = log if log is not None else BadInputLog()
        self.times = StageTimes()
        self.gallery = gallery if gallery is not None else Gallery(embedder_sha256, embedder.embedding_size)
        if self.gallery.embedder_sha256 != embedder_sha256:
            raise ValueError("the gallery holds embeddings of another embedder; rebuild it first")

    # --- building ------------------------------------------------------------------------------------
    @classmethod
    def from_files(cls, embedder: str | Path, *, detector: tuple[str | Path, str | Path, str | Path] | None,
                   matcher: str | Path | None = None, gallery: str | Path | None = None,
                   detector_settings: DetectorSettings | None = None, device: str | torch.device = "cpu",
                   align: AlignSettings | None = None, detector_backend: str = "torch", embedder_fp16: bool = False,
                   **options: Any) -> FaceRecognitionSystem:
        """Load the models from files: embedder checkpoint, P/R/O-Net weights (None: inputs are aligned crops),
        matcher JSON and gallery file (each checked against the embedder); a model-zoo entry's name stands for
        its file. Faces are cut as the checkpoint records its training crops were; ``align`` supplies what it
        does not record (and the face selection).
        ``detector_backend`` "onnx" and an ``embedder`` ending in ``.onnx`` run exported models on ONNX Runtime
        (see :func:`open_embedder`); ``embedder_fp16`` runs a checkpoint in half precision on CUDA."""
        device = torch.device(device)
        embedder_path = entry_file(embedder, EMBEDDER_FILE)
        model, recorded, sha = open_embedder(embedder_path, device, embedder_fp16)
        align = align or AlignSettings()
        if recorded is not None:
            align = AlignSettings(recorded.size, recorded.margin, recorded.method, align.select)
        face_detector = None
        if detector is not None:
            face_detector = FaceDetector.from_checkpoints(*detector, settings=detector_settings, device=device,
                                                          backend=detector_backend)
        loaded_matcher = (load_matcher(entry_file(matcher, MATCHER_FILE), sha, model.embedding_size)
                          if matcher is not None else None)
        loaded_gallery = Gallery.load(gallery, sha) if gallery is not None and Path(gallery).is_file() else None
        return cls(face_detector, model, sha, matcher=loaded_matcher, gallery=loaded_gallery, align=align, **options)

    @classmethod
    def from_config(cls, config: Config, *, embedder: str | Path | None = None,
                    matcher: str | Path | bool | None = True, gallery: str | Path | None = None,
                    aligned_input: bool = False) -> FaceRecognitionSystem:
        """The system of ``config``: P/R/O-Net, embedder and matcher from ``config.paths`` (each overridable
        here; ``matcher`` None/False: none, True: ``paths.matcher``), settings from the detector and system
        sections. ``aligned_input`` skips detection (the inputs are aligned face crops)."""
        device = select_device(config.runtime.device)
        nets = (config.path("pnet"), config.path("rnet"), config.path("onet"))
        if config.detector.backend == "onnx":
            nets = (config.path("onnx"),) * 3
        detector = None if aligned_input else nets
        matcher_path = config.path("matcher") if matcher is True else (matcher or None)
        backend = config.system.embedder_backend
        if embedder is None and backend.startswith("onnx"):
            embedder = resolve_onnx(config.path("onnx"), "embedder_int8" if backend == "onnx_int8" else "embedder")
        return cls.from_files(
            embedder or config.path("embedder"), detector=detector, detector_backend=config.detector.backend,
            embedder_fp16=backend == "torch_fp16",
            matcher=matcher_path, gallery=gallery, detector_settings=DetectorSettings.from_config(config.detector),
            device=device, align=AlignSettings(config.align.eval_size, config.align.margin, config.align.method,
                                               config.align.select),
            detect_batch_images=config.system.detect_batch_images, embed_batch_size=config.system.embed_batch_size,
            flip=config.system.flip, log=BadInputLog(strict=config.runtime.strict))

    # --- the pipeline ----------------------------------------------------------------------------------
    def _read(self, images: Sequence[ImageInput]) -> list[tuple[str, np.ndarray | None, str | None]]:
        """Each input as (name, RGB array or None, error or None); unreadable files go through the log."""
        out = []
        with self.times.stage("read", len(images)):
            for i, item in enumerate(images):
                if isinstance(item, np.ndarray):
                    out.append((f"image[{i}]", item, None))
                    continue
                try:
                    out.append((str(item), read_image(item), None))
                except DataError as error:
                    self.log.report(error)
                    out.append((str(item), None, error.reason))
        return out

    def _detect(self, arrays: list[np.ndarray]) -> list[Detections | None]:
        """Detections per image (batched); None for every image when inputs are aligned crops."""
        if self.detector is None:
            return [None] * len(arrays)
        found: list[Detections | None] = []
        with self.times.stage("detect", len(arrays)):
            for start in range(0, len(arrays), self.detect_batch_images):
                found += [d.to("cpu") for d in self.detector.detect(arrays[start:start + self.detect_batch_images])]
        return found

    def _faces_of(self, detections: Detections, image: np.ndarray, all_faces: bool) -> tuple[list[Face], Detections]:
        """Faces with the main face first (only that one unless ``all_faces``) and the matching Detections."""
        order = main_face_order(detections.boxes, image.shape[0], image.shape[1], self.align.select)
        chosen = select_faces(detections, order if all_faces else order[:1])
        landmarks = chosen.landmarks
        faces = [Face(chosen.boxes[k].numpy().astype(np.float64), float(chosen.scores[k]),
                      None if landmarks is None else landmarks[k].numpy().astype(np.float64))
                 for k in range(len(chosen))]
        return faces, chosen

    def _cut(self, images: Sequence[ImageInput], all_faces: bool
             ) -> tuple[list[ImageResult], list[tuple[Face, torch.Tensor]]]:
        """Read, detect and align: per image its faces (main face first; only that one unless ``all_faces``), and
        each face that could be aligned with its crop (``models.face_preprocess``)."""
        read = self._read(list(images))
        results = [ImageResult(name, error=error) for name, _, error in read]
        usable = [i for i, (_, array, _) in enumerate(read) if array is not None]
        arrays = [read[i][1] for i in usable]
        detections = self._detect(arrays)
        cut: list[tuple[Face, torch.Tensor]] = []
        with self.times.stage("align", len(usable)):
            for i, array, found in zip(usable, arrays, detections):
                if found is None:  # aligned input: the image's centre square is the face
                    square, box = centre_square(array)
                    results[i].faces = [Face(box.astype(np.float64), 1.0, None)]
                    cut.append((results[i].faces[0], torch.from_numpy(square).permute(2, 0, 1)))
                    continue
                if len(found) == 0:
                    continue
                faces, chosen = self._faces_of(found, array, all_faces)
                results[i].faces = faces
                aligned = cut_faces(array, chosen, self.align_size, self.align.margin, self.align.method)
                results[i].alignment_failures = sum(crop is None for crop in aligned)
                cut += [(face, crop) for face, crop in zip(faces, aligned) if crop is not None]
        return results, cut

    def crop_faces(self, images: Sequence[ImageInput], all_faces: bool = True) -> list[list[torch.Tensor]]:
        """The aligned uint8 crops [3, s, s] of each image's faces (main face first; only that one unless
        ``all_faces``): what the embedder gets, before the resizing to its input side."""
        results, cut = self._cut(images, all_faces)
        crops = {id(face): crop for face, crop in cut}
        return [[crops[id(face)] for face in result.faces if id(face) in crops] for result in results]

    def analyse(self, images: Sequence[ImageInput], all_faces: bool = True) -> list[ImageResult]:
        """Read, detect, align and embed: per image its faces (main face first) with embeddings.

        With ``all_faces`` False only the main face of each image is aligned and embedded.
        """
        results, cut = self._cut(images, all_faces)
        if cut:
            with self.times.stage("embed", sum(r.error is None for r in results)):
                embeddings = self._embed([crop for _, crop in cut])
            for (face, _), embedding in zip(cut, embeddings):
                face.embedding = embedding
        return results

    def _embed(self, crops: list[torch.Tensor]) -> np.ndarray:
        """Embed uint8 [3, h, w] crops, each first resized to the embedder's input side (as in training)."""
        side = self.embedder.input_size
        batch = torch.cat([resize_crops(c.unsqueeze(0), side) for c in crops])
        return self.embedder.embed(batch, batch_size=self.embed_batch_size, flip=self.flip).numpy()

    def analyse_in_chunks(self, images: Sequence[ImageInput], all_faces: bool = True, progress: str | None = None,
                          chunk: int = 32) -> list[ImageResult]:
        """:meth:`analyse` over ``chunk`` images at a time, with a tqdm bar named ``progress`` (None: no bar)."""
        results: list[ImageResult] = []
        with tqdm(total=len(images), desc=progress, unit="img", disable=progress is None, dynamic_ncols=True,
                  leave=False) as bar:
            for start in range(0, len(images), chunk):
                part = images[start:start + chunk]
                results += self.analyse(part, all_faces=all_faces)
                bar.update(len(part))
        return results

    def embed_images(self, images: Sequence[ImageInput], progress: str | None = None
                     ) -> tuple[np.ndarray, list[ImageResult]]:
        """Main-face embeddings [N, D] (rows of NaN where an image had no usable face) and the per-image results."""
        results = self.analyse_in_chunks(images, all_faces=False, progress=progress)
        out = np.full((len(results), self.embedder.embedding_size), np.nan, dtype=np.float32)
        for row, result in enumerate(results):
            if result.primary is not None:
                out[row] = result.primary.embedding
        return out, results

    def embed_sources(self, paths: Sequence[str]) -> list[np.ndarray | None]:
        """One main-face embedding per image path (None when unreadable or no face): the gallery's rebuild hook."""
        embeddings, results = self.embed_images(paths)
        return [embeddings[i] if r.primary is not None else None for i, r in enumerate(results)]

    # --- matching ----------------------------------------------------------------------------------------
    def _need_matcher(self) -> Matcher:
        if self.matcher is None:
            raise ValueError("this system has no matcher; train one with train_matching.py")
        return self.matcher

    def active_matcher(self, gallery: np.ndarray | None = None) -> Matcher:
        """The matcher as this system applies it: a centring matcher is centred on the gallery's mean embedding
        once the gallery is large enough (``Matcher.adapted_to``), so its threshold holds on these photos.
        ``gallery``: the gallery's stacked embeddings, when the caller has them already."""
        matcher = self._need_matcher()
        return matcher.adapted_to(self.gallery.matrix()[0] if gallery is None else gallery)

    def verify(self, image_a: ImageInput, image_b: ImageInput) -> VerifyResult:
        """Whether the main faces of two images are the same person (False, with a reason, when a face is missing)."""
        matcher = self.active_matcher()
        first, second = self.analyse([image_a, image_b], all_faces=False)
        reasons = [f"{name} image: {r.error or 'no face found'}" for name, r in (("first", first), ("second", second))
                   if r.primary is None]
        if reasons:
            return VerifyResult(False, None, len(first.faces), len(second.faces), "; ".join(reasons))
        with self.times.stage("match", 1):
            score, same = matcher.verify(first.primary.embedding[None], second.primary.embedding[None])
        return VerifyResult(bool(same[0]), float(score[0]), len(first.faces), len(second.faces))

    def identification_threshold(self, accept_target: float = 0.0) -> float:
        """The identification threshold: the matcher's own, or stricter so that about ``accept_target`` of
        probes of people not in this gallery are accepted. From the matcher's simulated open-set galleries
        when it has them; else from its false-accept curve, taking the M gallery comparisons as independent
        (per-comparison FAR 1 - (1 - r)^(1/M): conservative, as a probe's scores are correlated)."""
        matcher = self.active_matcher()
        if accept_target <= 0.0 or self.gallery.num_embeddings == 0:
            return matcher.threshold
        simulated = matcher.open_set_threshold(accept_target, len(self.gallery))
        if simulated is not None:
            return simulated
        per_comparison = 1.0 - (1.0 - accept_target) ** (1.0 / self.gallery.num_embeddings)
        return matcher.threshold_at_far(per_comparison)

    def match_embeddings(self, embeddings: np.ndarray, threshold: float | None = None
                         ) -> tuple[list[str | None], list[str | None], np.ndarray]:
        """Name each embedding row against the gallery: (accepted names, closest names, best scores).

        An identity's score is its best gallery embedding's or its mean embedding's (the matcher's
        ``gallery_scoring``); rows of NaN (no face) get None and NaN.
        """
        gallery, owners = self.gallery.matrix()
        matcher = self.active_matcher(gallery)
        thr = matcher.threshold if threshold is None else threshold
        embeddings = np.asarray(embeddings, dtype=np.float64).reshape(-1, self.embedder.embedding_size)
        n = len(embeddings)
        accepted: list[str | None] = [None] * n
        closest: list[str | None] = [None] * n
        best = np.full(n, np.nan)
        valid = np.flatnonzero(np.all(np.isfinite(embeddings), axis=1))
        if not len(valid) or not len(gallery):
            return accepted, closest, best
        with self.times.stage("match", len(valid)):
            per_identity = matcher.identity_similarity(embeddings[valid], gallery, owners, len(self.gallery))
            top = per_identity.argmax(axis=1)
            top_scores = matcher.similarity(per_identity[np.arange(len(valid)), top])  # back to matcher units
            ok = matcher.decide(top_scores, thr)
        names = self.gallery.names
        for row, identity, score, accept in zip(valid, top, top_scores, ok):
            closest[row] = names[identity]
            accepted[row] = names[identity] if accept else None
            best[row] = score
        return accepted, closest, best

    def identify(self, image: ImageInput, threshold: float | None = None) -> list[Identification]:
        """Every face of one image named against the gallery (main face first); unknown people get name None."""
        thr = self._need_matcher().threshold if threshold is None else threshold  # centring leaves it as tuned
        result = self.analyse([image], all_faces=True)[0]
        if result.error is not None:
            raise DataError(result.source, result.error)
        embedded = [f for f in result.faces if f.embedding is not None]
        if not embedded:
            return []
        accepted, closest, scores = self.match_embeddings(np.stack([f.embedding for f in embedded]), thr)
        return [Identification(face.box, name, near, None if np.isnan(s) else float(s), thr)
                for face, name, near, s in zip(embedded, accepted, closest, scores)]

    def enroll(self, name: str, images: Sequence[ImageInput]) -> tuple[int, list[str]]:
        """Add the main face of each image to ``name`` in the gallery; returns (embeddings added, images skipped
        with the reason). Image paths are kept so the gallery can be rebuilt for new models."""
        embeddings, results = self.embed_images(images)
        keep = [i for i, r in enumerate(results) if r.primary is not None]
        skipped = [f"{r.source}: {r.error or 'no face found'}" for r in results if r.primary is None]
        if keep:
            sources = [str(Path(images[i]).resolve()) if not isinstance(images[i], np.ndarray) else "" for i in keep]
            self.gallery.add(name, embeddings[keep], sources, embedder_sha256=self.embedder_sha256)
        return len(keep), skipped

    def rebuild_gallery(self, stored: Gallery) -> RebuildReport:
        """Replace the gallery by ``stored`` re-embedded from its source images with this system's models."""
        rebuilt, report = stored.rebuild(self.embed_sources, self.embedder_sha256, self.embedder.embedding_size)
        self.gallery = rebuilt
        return report
