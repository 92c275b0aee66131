"""Evaluate a model-zoo entry (README "Models") on data you point at, and print its figures as the README's table.

    python -m deploy.evaluate mtcnn_wider --wider ../shared/data/wider_face_train_subset --holdout-every 10
    python -m deploy.evaluate mtcnn_wider --wider /data/WIDER --fddb FDDB-folds/FDDB-fold-01-ellipseList.txt \\
        --fddb-images /data/originalPics
    python -m deploy.evaluate NAME --pairs ../shared/data/lfw_top12_100px/pairs.txt --detector mtcnn_wider

The entry's checksums are verified first; given no data, the command prints the figures its training run recorded
(``eval.json``). Settings (detector thresholds, minimum face size, evaluation IoU,
alignment, flip) come from the entry's own ``config.json``; ``--config``/``--set`` change them.

* ``--wider DIR``: the cascade on a WIDER-format folder, scored by ``training/mtcnn/evaluation.py`` exactly as
  ``train_mtcnn.py`` scores its validation split: AP at IoU 0.5 over the ranked O-Net output, recall and
  precision after each stage, and easy/medium/hard AP where the official keep-lists are in the folder. The
  images are ``WIDER_val`` (with ``wider_face_split/wider_face_val_bbx_gt.txt``), or with ``--holdout-every N``
  every Nth image of the training annotation file (``mtcnn.holdout_every``: how the WIDER-subset entries held
  out their validation images).
* ``--fddb FOLD_FILE`` (or a folder of fold files) ``--fddb-images DIR``: the FDDB discrete protocol, true-positive
  rate at 1,000 and 2,000 false positives.
* ``--pairs FILE [--images DIR]``: the LFW protocol on a pairs file (folds as the file gives them), through the
  system: the entry's cascade (or ``--detector``) finds and aligns each photo's main face, the entry's embedder
  embeds it (``--aligned``, or no cascade at all: the images are aligned face crops); plus the accuracy of the
  entry's matcher at its own threshold, over the pairs with a face in both photos.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from config import Config, load_config
from datasets.lfw import Pair, check_pairs_images, lfw_image_path, read_pairs
from deploy.figures import figures_table, pairs_data, wider_data
from models.matcher import matcher_summary
from models.mtcnn import NET_NAMES
from models.system import FaceRecognitionSystem
from models.weights import load_net
from models.zoo import CASCADE_FILES, EMBEDDER_FILE, MATCHER_FILE, has_cascade, resolve_entry, verify_entry
from training.mtcnn.cascade import evaluate, evaluate_fddb
from training.mtcnn.data import MTCNNData, validation_split
from utils.atomic import atomic_write_json
from utils.cli import add_config_args, config_from_args, detector_overrides, run
from utils.device import select_device
from utils.errors import BadInputLog, ConfigError, DataError
from utils.metrics import pair_scores, verification_metrics


def get_args_parser() -> argparse.ArgumentParser:
    """The command line (every flag explained in ``--help``)."""
    parser = argparse.ArgumentParser(
        prog="python -m deploy.evaluate",
        description="Verify a model-zoo entry's checksums, evaluate it on WIDER-format images, an FDDB fold and/or "
                    "an LFW-format pairs file, and print the figures as the README's markdown table.")
    parser.add_argument("entry", help="entry name (under weights/ or $FACE_TOOLKIT_WEIGHTS) or entry folder")
    wider = parser.add_argument_group("detection")
    wider.add_argument("--wider", metavar="DIR", default=None,
                       help="WIDER-format folder: WIDER_val/images + wider_face_split/wider_face_val_bbx_gt.txt "
                            "(easy/medium/hard keep-lists used when present)")
    wider.add_argument("--holdout-every", type=int, default=0, metavar="N",
                       help="instead of WIDER_val, score every Nth image of the training annotation file "
                            "(WIDER_train), as mtcnn.holdout_every held it out (default: 0, WIDER_val)")
    wider.add_argument("--fddb", metavar="FOLD_FILE", default=None,
                       help="FDDB ellipse list (FDDB-fold-XX-ellipseList.txt), or a folder of them")
    wider.add_argument("--fddb-images", metavar="DIR", default=None, help="FDDB image root (originalPics) for --fddb")
    pairs = parser.add_argument_group("verification")
    pairs.add_argument("--pairs", metavar="FILE", default=None, help="LFW-format pairs file")
    pairs.add_argument("--images", metavar="DIR", default=None,
                       help="image root of the pairs, LFW layout (default: <folder of FILE>/images)")
    pairs.add_argument("--detector", metavar="DIR", default=None,
                       help="cascade that finds and aligns the faces of the pairs: an entry name or a folder of "
                            "pnet.pt, rnet.pt, onet.pt (default: the entry's own cascade, if it has one)")
    pairs.add_argument("--aligned", action="store_true",
                       help="the pair images are aligned face crops: no detection, even with a cascade")
    parser.add_argument("--json", metavar="OUT", default=None, help="also write the records as JSON (eval.json form)")
    parser.add_argument("--workers", type=int, default=None, help="image-decoding processes (default: runtime.workers)")
    add_config_args(parser)
    return parser


def entry_config(args: argparse.Namespace, entry: Path) -> Config:
    """The entry's own config.json (when it has one, unless --config names another) with the --set overrides."""
    own = entry / "config.json"
    return config_from_args(args, lambda file, items: load_config(file or (own if own.is_file() else None), items))


def detection_records(args: argparse.Namespace, entry: Path, config: Config, log: BadInputLog,
                      device: torch.device, workers: int) -> list[dict[str, Any]]:
    """The cascade of ``entry`` on the WIDER-format folder and/or FDDB fold the flags name."""
    if not has_cascade(entry):
        raise ConfigError(f"entry {entry.name} has no cascade ({', '.join(CASCADE_FILES)}): it cannot detect faces")
    nets = {net: load_net(entry, net).to(device) for net in NET_NAMES}
    records = []
    if args.wider:
        items, names, keep = validation_split(Path(args.wider), args.holdout_every, config.mtcnn.eval_max_images, log)
        if not items:
            raise DataError(args.wider, "no images to evaluate in this WIDER-format folder")
        data = MTCNNData([], items, names, [], [], keep)
        report = evaluate(nets, data, "onet", config, None, log, device, workers)
        records.append({"task": "detection", "data": wider_data(args.wider, args.holdout_every), "figures": report})
    if args.fddb:
        if not args.fddb_images:
            raise ConfigError("--fddb needs --fddb-images (the originalPics folder)")
        report = evaluate_fddb(nets, config, device, args.fddb, args.fddb_images, log, workers)
        records.append({"task": "fddb", "data": f"FDDB `{Path(args.fddb).name}`", "figures": report})
    return records


def pairs_detector(args: argparse.Namespace, entry: Path) -> str | Path | None:
    """The cascade that aligns the pair images: --detector, else the entry's own; None for aligned crops."""
    if args.aligned:
        return None
    return args.detector or (entry if has_cascade(entry) else None)


def pair_embeddings(system: FaceRecognitionSystem, pairs: list[Pair], images: Path) -> tuple[np.ndarray, np.ndarray]:
    """Main-face embeddings of the two images of each pair (rows of NaN where no face was found); each image
    goes through the system once."""
    sides = [[str(lfw_image_path(images, p.name_a, p.index_a)) for p in pairs],
             [str(lfw_image_path(images, p.name_b, p.index_b)) for p in pairs]]
    paths = sorted(set(sides[0]) | set(sides[1]))
    embeddings, _ = system.embed_images(paths, progress="pair images")
    row = {path: i for i, path in enumerate(paths)}
    return embeddings[[row[p] for p in sides[0]]], embeddings[[row[p] for p in sides[1]]]


def verification_record(args: argparse.Namespace, entry: Path, config: Config, log: BadInputLog) -> dict[str, Any]:
    """The LFW protocol on the pairs file through the system built from ``entry`` and the cascade of
    ``paths.pnet/rnet/onet`` (none: aligned input), and the accuracy of the entry's matcher if it has one."""
    if not (entry / EMBEDDER_FILE).is_file():
        raise ConfigError(f"entry {entry.name} has no {EMBEDDER_FILE}: it cannot verify faces")
    cascade = pairs_detector(args, entry)
    aligned = cascade is None
    matcher = entry / MATCHER_FILE if (entry / MATCHER_FILE).is_file() else None
    system = FaceRecognitionSystem.from_config(config, embedder=entry, matcher=matcher, aligned_input=aligned)
    system.log = log
    pairs_file = Path(args.pairs)
    images = Path(args.images) if args.images else pairs_file.parent / "images"
    parsed = read_pairs(pairs_file)
    kept = [(number, pair) for number, fold in enumerate(parsed.folds)
            for pair in check_pairs_images(fold, images, log=log)]
    if not kept:
        raise DataError(pairs_file, f"no pair has both images under {images}")
    emb_a, emb_b = pair_embeddings(system, [pair for _, pair in kept], images)
    found = np.isfinite(emb_a).all(axis=1) & np.isfinite(emb_b).all(axis=1)
    same = np.array([pair.same for _, pair in kept])[found]
    folds = np.array([number for number, _ in kept])[found]
    scores, higher = pair_scores(emb_a[found], emb_b[found], "cosine")
    try:
        result = verification_metrics(scores, same, folds if parsed.num_folds >= 2 else 10, higher_is_same=higher)
    except ValueError as exc:
        raise DataError(pairs_file, f"the pairs with a face in both images do not allow the protocol: {exc}") from None
    figures: dict[str, Any] = {**result.as_dict(), "pairs_without_face": int((~found).sum()),
                               "pairs_missing_images": len(parsed.pairs) - len(kept),
                               "detector": "aligned input" if aligned else str(cascade), "flip": system.flip}
    if system.matcher is not None:  # a centring matcher is centred on these photos, as on a system's gallery
        matcher = system.matcher.adapted_to(np.unique(np.concatenate([emb_a[found], emb_b[found]]), axis=0))
        _, decided = matcher.verify(emb_a[found], emb_b[found])
        figures.update(matcher=matcher_summary(system.matcher), matcher_accuracy=float(np.mean(decided == same)),
                       matcher_far=float(decided[~same].mean()), matcher_promised_far=matcher.far_at())
    return {"task": "verification", "data": pairs_data(pairs_file), "figures": figures}


def main(args: argparse.Namespace) -> int:
    """Verify the entry, run each evaluation the flags ask for, print the table (and write --json)."""
    entry = resolve_entry(args.entry)
    if not entry.is_dir():
        raise DataError(entry, "not a model-zoo entry folder")
    checked = verify_entry(entry)
    print(f"{entry}: {len(checked)} files match SHA256SUMS")
    if not (args.wider or args.fddb or args.pairs):
        recorded = json.loads((entry / "eval.json").read_text(encoding="utf-8"))["evaluations"]
        print("no data given (--wider, --fddb, --pairs); the figures its training run recorded (eval.json):")
        print(figures_table(entry.name, recorded))
        return 0
    if args.pairs:
        args.set_items += detector_overrides(pairs_detector(args, entry))
    config = entry_config(args, entry)
    device = select_device(config.runtime.device)
    workers = config.runtime.workers if args.workers is None else args.workers
    log = BadInputLog(strict=config.runtime.strict)
    records = detection_records(args, entry, config, log, device, workers) if args.wider or args.fddb else []
    if args.pairs:
        records.append(verification_record(args, entry, config, log))
    if len(log):
        print(log.summary())
    print(figures_table(entry.name, records))
    if args.json:
        atomic_write_json(Path(args.json), {"entry": entry.name, "evaluations": records})
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main, get_args_parser()))
