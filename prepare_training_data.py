"""Stage 0: lay out training_data/, generate the synthetic face set, fetch what has a public download,
explain what needs registration, verify every dataset present, and print a summary table.

    python prepare_training_data.py                      # everything: synthetic set, downloads, verify
    python prepare_training_data.py --only synthetic     # just the built-in synthetic set (no network)
    python prepare_training_data.py --verify --deep      # only check what is there, decoding every image
    python prepare_training_data.py --make-pairs DIR     # an LFW View-2 pairs file over an identity folder
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from config import Config, load_config
from datasets.align_dataset import ALIGN_DATASETS, align_dataset
from datasets.lfw import write_pairs
from datasets.pairs_builder import make_pairs
from datasets.sources import SOURCES, fetch_source, missing_paths
from datasets.synthetic import generate_synthetic_set
from datasets.verify import DatasetReport, format_table, verify_identities, verify_landmarks, verify_pairs, verify_wider
from utils.atomic import atomic_write_text
from utils.cli import add_config_args, config_from_args, run
from utils.config_io import save_config
from utils.errors import ConfigError, DataError

DATASET_CHOICES = ("synthetic", *SOURCES)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", choices=DATASET_CHOICES, default=None, metavar="NAME",
                        help=f"work on these datasets only (repeatable): {', '.join(DATASET_CHOICES)}")
    parser.add_argument("--skip-download", action="store_true",
                        help="do not download anything; still generate the synthetic set and verify")
    parser.add_argument("--verify", action="store_true",
                        help="only verify what is present (no generation, no downloads)")
    parser.add_argument("--deep", action="store_true",
                        help="while verifying, decode every image to find corrupt files (slower)")
    parser.add_argument("--force-synthetic", action="store_true",
                        help="regenerate the synthetic set even when a complete one with the same spec exists")
    parser.add_argument("--retries", type=int, default=3,
                        help="download retries per mirror on connection errors and 5xx")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="seconds before a stalled download connection is retried")
    parser.add_argument("--align", metavar="DATASET", choices=ALIGN_DATASETS, default=None,
                        help="instead of the steps above: detect, align and save the faces of an identity dataset "
                             f"({', '.join(ALIGN_DATASETS)}) with the cascade paths.pnet/rnet/onet name (settings: "
                             "the align section); resumable")
    parser.add_argument("--align-src", metavar="PATH", default=None,
                        help="with --align: identity-folder tree or insightface .rec to align (default: from paths)")
    parser.add_argument("--align-dst", metavar="DIR", default=None,
                        help="with --align: output folder (default: paths.aligned for synthetic, else "
                             "<data_root>/aligned/<DATASET>)")
    parser.add_argument("--make-pairs", metavar="DIR", default=None,
                        help="instead of the steps above: write an LFW View-2 pairs file over the LFW-layout identity "
                             "folder DIR (<Name>/<Name>_NNNN.jpg, as --align writes evaluation sets)")
    parser.add_argument("--folds", type=int, default=10, help="with --make-pairs: number of folds")
    parser.add_argument("--pairs-per-fold", type=int, default=300,
                        help="with --make-pairs: same pairs per fold (and as many different ones); fewer when the "
                             "folder cannot supply them")
    parser.add_argument("--fold-split", choices=("identity", "image"), default="identity",
                        help="with --make-pairs: folds disjoint by person (the LFW protocol; needs 2 people per "
                             "fold) or by photo (sets of few people)")
    parser.add_argument("--pairs-out", metavar="FILE", default=None,
                        help="with --make-pairs: the file to write (default: pairs_<folds>folds.txt beside DIR); "
                             "an existing file is never overwritten")
    add_config_args(parser)
    return parser


def prepare_synthetic(config: Config, force: bool) -> None:
    """Generate the synthetic set; a complete one made from the same spec is kept as it is."""
    out_dir = config.path("synthetic")
    counts = generate_synthetic_set(out_dir, config.synthetic, workers=max(1, config.runtime.workers), force=force)
    summary = ", ".join(f"{k}={v}" for k, v in counts.items())
    print(f"synthetic set: {out_dir} ({summary})")


def fetch_public(config: Config, names: list[str], retries: int, timeout: float) -> list[str]:
    """Fetch each named source that has direct downloads; print where to get the rest. Returns the ones still
    missing."""
    data_root = Path(config.paths.data_root)
    incomplete = []
    for name in names:
        source = SOURCES[name]
        if not missing_paths(source, data_root):
            print(f"{source.title}: present in {data_root / source.folder}")
            continue
        try:
            result = fetch_source(source, data_root, log=print, retries=retries, timeout=timeout)
        except DataError as error:
            print(f"{source.title}: download failed: {error}")
            incomplete.append(name)
            continue
        if not result.complete:
            incomplete.append(name)
    return incomplete


def verify_all(config: Config, names: list[str], deep: bool) -> list[DatasetReport]:
    """Verify every selected dataset that is on disk with the readers the trainers use."""
    strict = config.runtime.strict
    data_root = Path(config.paths.data_root)
    reports: list[DatasetReport] = []
    if "synthetic" in names:
        root = config.path("synthetic")
        reports += [
            verify_wider(root, "synthetic: scenes (WIDER layout)", deep, strict),
            verify_landmarks(root / "landmarks" / "landmarks_train.txt", "synthetic: landmarks train", deep, strict),
            verify_identities(root / "identities", "synthetic: identities", deep, strict),
            verify_pairs(root / "lfw_val" / "pairs.txt", root / "lfw_val" / "images", "synthetic: val pairs",
                         strict),
            verify_pairs(root / "lfw_test" / "pairs.txt", root / "lfw_test" / "images", "synthetic: test pairs",
                         strict),
        ]
    folder = {name: data_root / SOURCES[name].folder for name in SOURCES}
    if "wider_face" in names:
        reports.append(verify_wider(folder["wider_face"], "WIDER FACE", deep, strict))
    if "lfw" in names:
        reports.append(verify_pairs(folder["lfw"] / "pairs.txt", folder["lfw"] / "images", "LFW", strict))
    for name in ("vggface2", "casia_webface", "ms_celeb_1m"):
        if name in names:
            root = folder[name] / "train" if (folder[name] / "train").is_dir() else folder[name]
            reports.append(verify_identities(root, SOURCES[name].title, deep, strict))
    if "celeba" in names:
        celeba = folder["celeba"]
        reports.append(verify_identities(celeba / "identities", "CelebA identities", deep, strict)
                       if (celeba / "identities").is_dir() else
                       DatasetReport("CelebA", celeba, "present" if celeba.is_dir() else "missing"))
    return reports


def write_pairs_file(args: argparse.Namespace, seed: int) -> Path:
    """--make-pairs: build the folds and write them atomically to a file that does not exist yet."""
    images = Path(args.make_pairs)
    out = Path(args.pairs_out) if args.pairs_out else images.parent / f"pairs_{args.folds}folds.txt"
    if out.exists():
        raise DataError(out, "exists already (choose another --pairs-out or remove it)")
    if args.folds < 1 or args.pairs_per_fold < 1:
        raise ConfigError("--folds and --pairs-per-fold must be at least 1")
    folds = make_pairs(images, args.folds, args.pairs_per_fold, seed, split=args.fold_split)
    write_pairs(out, folds)
    half = len(folds[0]) // 2
    print(f"{out}: {len(folds)} {args.fold_split}-disjoint folds of {half} same + {half} different pairs over {images}")
    return out


def main(args: argparse.Namespace) -> int:
    config = config_from_args(args, load_config)
    if args.make_pairs:
        write_pairs_file(args, config.runtime.seed)
        return 0
    if args.align:
        align_dataset(args.align, config, args.align_src, args.align_dst, workers=config.runtime.workers)
        return 0
    names = list(dict.fromkeys(args.only or DATASET_CHOICES))
    data_root = Path(config.paths.data_root)
    for folder in [SOURCES[n].folder for n in SOURCES] + ["aligned"]:
        (data_root / folder).mkdir(parents=True, exist_ok=True)
    save_config(config, data_root / "prepare_config.json")

    incomplete: list[str] = []
    if not args.verify:
        if "synthetic" in names:
            prepare_synthetic(config, args.force_synthetic)
        public = [n for n in names if n != "synthetic"]
        if public and not args.skip_download:
            incomplete = fetch_public(config, public, args.retries, args.timeout)
    reports = verify_all(config, names, args.deep)
    print()
    print(format_table(reports))
    atomic_write_text(data_root / "verify_report.json", json.dumps(
        [{"name": r.name, "path": str(r.path), "status": r.status, "counts": r.counts, "problems": r.problems}
         for r in reports], indent=2) + "\n")
    problems = [r for r in reports if r.status == "problems"]
    asked_explicitly = args.only is not None
    missing_asked = [n for n in incomplete if asked_explicitly]
    if problems or missing_asked:
        print(f"\n{len(problems)} dataset(s) with problems; {len(missing_asked)} requested dataset(s) incomplete",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run(main, get_args_parser()))
