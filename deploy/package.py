"""Make a model-zoo entry (README "Models", ``models/zoo.py``) from a training run folder.

    python -m deploy.package runs/mtcnn_wider --name mtcnn_wider --dataset wider_face --dataset lfw_5590 \\
        --trained-on "828 WIDER FACE train images of 5 events and the lfw_5590 landmark list" \\
        --command "python train_mtcnn.py --stage all --config configs/mtcnn_wider.json --output-dir runs/mtcnn_wider" \\
        --wall-time "65 min" --machine "2-core CPU, no GPU"

Run folders (``--kind``, found from the folder when not given):

* ``mtcnn``: what ``train_mtcnn.py`` writes: ``config.json`` and ``pnet/``, ``rnet/``, ``onet/`` each with
  ``best.pt``, ``metrics_train.csv``, ``metrics_val.csv`` (and ``onet/eval.json``, the cascade's evaluation);
* ``embedder``: what ``train_facenet.py`` writes: ``best.pt``, ``config.json``, ``metrics_*.csv``,
  ``report.json`` (the best checkpoint's validation), and when ``train_matching.py`` ran, ``matcher.json`` and
  ``matching/report.json``;
* ``system``: the one-command pipeline's ``runs/``: ``mtcnn/`` and ``facenet/`` as above, and
  ``system/report.json`` from ``test_system.py`` when present.

The entry gets the weights stripped to what inference loads with ``torch.load(..., weights_only=True)``: each
net's state_dict alone (``pnet.pt``, ``rnet.pt``, ``onet.pt``), the embedder's state_dict with its architecture
record (``embedder.pt``, no optimizer or RNG state); the matcher is re-tagged with the stripped embedder's
SHA-256 (same weights, new file). Then ``config.json`` (a system's cascade config as ``config_mtcnn.json``), the
metrics as ``metrics_<part>_<split>.csv``, ``eval.json`` (the run's own evaluations, in ``deploy.evaluate``'s
form), ``MODEL.md`` and ``SHA256SUMS``. The entry is built in a hidden folder beside its place and renamed in
when complete; an existing entry is replaced only with ``--force``.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from config import Config, load_config
from datasets.sources import CELEBA, LFW, WIDER_FACE
from deploy.figures import figures_table, pairs_data, wider_data
from models.matcher import load_matcher
from models.mtcnn import NET_NAMES
from models.system import read_embedder
from models.weights import load_net, read_state_dict
from models.zoo import EMBEDDER_FILE, MATCHER_FILE, NAME_PATTERN, SUMS_FILE, sums_text, verify_entry, weights_root
from utils.atomic import atomic_write_json, atomic_write_text
from utils.checkpoint import load_checkpoint, save_checkpoint
from utils.cli import run
from utils.errors import ConfigError, DataError
from utils.hashing import sha256_file

KINDS = ("mtcnn", "embedder", "system")
# What MODEL.md says about each dataset's terms (--dataset KEY).
TERMS = {
    "wider_face": f"WIDER FACE (Yang et al. 2016, {WIDER_FACE.homepage}): for non-commercial research and "
                  "educational use only.",
    "celeba": f"CelebA (Liu et al. 2015, {CELEBA.homepage}): for non-commercial research purposes only.",
    "lfw_5590": f"the 5-point landmark list of Sun et al. 2013 on LFW images ({LFW.homepage}): research data; "
                "check its authors' terms before any other use.",
    "mtcnn_original": "the original MTCNN weights (Zhang et al. 2016) as converted by facenet-pytorch (MIT licence), "
                      "the starting point of the fine-tuning.",
    "synthetic": "the toolkit's own synthetic face set (`prepare_training_data.py --only synthetic`): generated, "
                 "no third-party images; the project's own terms.",
}
# MODEL.md's table of files, in this order: (the file that tells it is there, its row).
FILE_NOTES = (
    ("pnet.pt", "`pnet.pt`, `rnet.pt`, `onet.pt` | P-Net, R-Net, O-Net: plain state_dicts "
                "(`torch.load(f, weights_only=True)`)"),
    (EMBEDDER_FILE, f"`{EMBEDDER_FILE}` | the embedder: `model` (state_dict), `embedder` (architecture and face "
                    "cut), `kind`"),
    (MATCHER_FILE, f"`{MATCHER_FILE}` | the verification matcher, tagged with this {EMBEDDER_FILE}'s SHA-256"),
    ("config.json", "`config.json` | the configuration it was trained with (`--config config.json` repeats it)"),
    ("config_mtcnn.json", "`config_mtcnn.json` | the cascade's configuration"),
    ("metrics_pnet_train.csv", "`metrics_<net>_<split>.csv` | per-epoch training and validation metrics"),
    ("metrics_embedder_train.csv", "`metrics_embedder_<split>.csv` | per-epoch training and validation metrics"),
    ("eval.json", "`eval.json` | the training run's own evaluations (the figures below)"),
    ("MODEL.md", "`MODEL.md` | this card"),
    (SUMS_FILE, f"`{SUMS_FILE}` | SHA-256 of every other file (`sha256sum -c {SUMS_FILE}`)"),
)


def detect_kind(run_dir: Path) -> str:
    """Which kind of run folder ``run_dir`` is, from the files in it."""
    if all((run_dir / net / "best.pt").is_file() for net in NET_NAMES):
        return "mtcnn"
    if (run_dir / "best.pt").is_file():
        return "embedder"
    if (run_dir / "mtcnn").is_dir() and (run_dir / "facenet").is_dir():
        return "system"
    raise DataError(run_dir, "not a run folder: expected pnet/, rnet/, onet/ with best.pt (train_mtcnn.py), "
                             "best.pt (train_facenet.py) or mtcnn/ and facenet/ (the pipeline's runs/)")


def _need(path: Path, what: str) -> Path:
    """``path`` when it is a file, else DataError saying what it should have been."""
    if not path.is_file():
        raise DataError(path, f"{what} not found in the run folder")
    return path


def _read_json(path: Path) -> dict[str, Any]:
    """A report file of the run."""
    try:
        return json.loads(_need(path, "report").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(path, f"not a JSON report ({exc})") from None


def _run_config(path: Path) -> Config:
    """The run's saved config.json, validated."""
    return load_config(_need(path, "config.json (the run's configuration)"))


def add_cascade(run_dir: Path, out: Path, config_name: str) -> list[dict[str, Any]]:
    """Plain state_dicts, config and metrics of a train_mtcnn.py run into ``out``; its detection record."""
    config = _run_config(run_dir / "config.json")
    shutil.copyfile(run_dir / "config.json", out / config_name)
    for net in NET_NAMES:
        best = _need(run_dir / net / "best.pt", f"{net} checkpoint")
        save_checkpoint(out / f"{net}.pt", read_state_dict(best, net))
        load_net(out / f"{net}.pt", net)  # the stripped file must load as the original does
        for split in ("train", "val"):
            metrics = _need(run_dir / net / f"metrics_{split}.csv", "metrics")
            shutil.copyfile(metrics, out / f"metrics_{net}_{split}.csv")
    report = _read_json(run_dir / "onet" / "eval.json")
    return [{"task": "detection", "data": wider_data(config.path("wider_face"), config.mtcnn.holdout_every),
             "figures": report}]


def add_embedder(run_dir: Path, out: Path) -> list[dict[str, Any]]:
    """The stripped embedder, its re-tagged matcher, config and metrics of a train_facenet.py run into ``out``;
    its verification record (and the matching record, when train_matching.py ran)."""
    config = _run_config(run_dir / "config.json")
    shutil.copyfile(run_dir / "config.json", out / "config.json")
    best = _need(run_dir / "best.pt", "embedder checkpoint")
    read_embedder(best, torch.device("cpu"))  # a checkpoint the system can load, or a one-line error
    state = load_checkpoint(best)
    save_checkpoint(out / EMBEDDER_FILE, {"kind": state.get("kind", "facenet"), "model": state["model"],
                                          "embedder": state["embedder"]})
    read_embedder(out / EMBEDDER_FILE, torch.device("cpu"))
    for split in ("train", "val"):
        shutil.copyfile(_need(run_dir / f"metrics_{split}.csv", "metrics"), out / f"metrics_embedder_{split}.csv")
    report = _read_json(run_dir / "report.json")
    if "best_validation" not in report:
        raise DataError(run_dir / "report.json", "no best_validation figures (the run did not finish validating)")
    records = [{"task": "verification", "data": pairs_data(config.facenet_path("val_pairs")),
                "figures": report["best_validation"]}]
    if (run_dir / MATCHER_FILE).is_file():
        matcher = load_matcher(run_dir / MATCHER_FILE, sha256_file(best))  # made for this very checkpoint
        matcher.save(out / MATCHER_FILE, sha256_file(out / EMBEDDER_FILE))
        matching = _read_json(run_dir / "matching" / "report.json")
        records.append({"task": "matching", "data": pairs_data(matching["pairs_file"]), "figures": matching})
    return records


def add_system(run_dir: Path, out: Path) -> list[dict[str, Any]]:
    """Cascade, embedder and matcher of the pipeline's runs/ into ``out``; their records and test_system.py's."""
    records = add_cascade(run_dir / "mtcnn", out, "config_mtcnn.json") + add_embedder(run_dir / "facenet", out)
    if (run_dir / "system" / "report.json").is_file():
        report = _read_json(run_dir / "system" / "report.json")
        records.append({"task": "system", "data": pairs_data(report["test_set"]), "figures": report})
    return records


BUILDERS = {"mtcnn": lambda run_dir, out: add_cascade(run_dir, out, "config.json"), "embedder": add_embedder,
            "system": add_system}


def model_card(name: str, files: Sequence[str], records: Sequence[dict[str, Any]], datasets: Sequence[str],
               trained_on: str, command: str, wall_time: str, machine: str) -> str:
    """MODEL.md: the files, what the model was trained on and under which terms, how to reproduce it, its figures."""
    notes = [f"| {row} |" for file, row in FILE_NOTES if file in files]
    uses = []
    if "pnet.pt" in files:
        uses.append(f'`--detector {name}`, `paths.pnet/rnet/onet={name}`, `FaceDetector.from_pretrained("{name}")`')
    if EMBEDDER_FILE in files:
        uses.append(f"`--embedder {name}` (with its matcher when it has one)")
    terms = "\n".join(f"- {TERMS[d]}" for d in datasets) or "- (no dataset named with --dataset)"
    return f"""# {name}

| file | what it is |
|---|---|
{chr(10).join(notes)}

Use it by name: {"; ".join(uses)}.

## Trained on

{trained_on}

Terms of the data it was trained on:

{terms}

## Reproduce

```bash
{command}
```

Wall time: {wall_time}, on {machine}.

## Figures

The training run's own evaluations (`eval.json`):

{figures_table(name, records)}

`python -m deploy.evaluate {name} --wider DIR | --fddb FOLD_FILE --fddb-images DIR | --pairs FILE` measures
them again on data you point at (README "Models").
"""


def package(run_dir: str | Path, name: str, *, kind: str | None = None, root: str | Path | None = None,
            force: bool = False, datasets: Sequence[str] = (), trained_on: str, command: str, wall_time: str,
            machine: str) -> Path:
    """Build the entry ``name`` under the weights root from ``run_dir``; returns its folder."""
    run_dir = Path(run_dir)
    if not NAME_PATTERN.fullmatch(name):
        raise ConfigError(f"entry name {name!r}: use letters, digits, '_' and '-' (starting with a letter or digit)")
    unknown = [d for d in datasets if d not in TERMS]
    if unknown:
        raise ConfigError(f"unknown dataset {unknown[0]!r}; known: {', '.join(TERMS)}")
    kind = kind or detect_kind(run_dir)
    dest = weights_root(root) / name
    if dest.exists() and not force:
        raise ConfigError(f"{dest} exists; --force replaces it")
    dest.parent.mkdir(parents=True, exist_ok=True)
    build = dest.parent / f".{name}.{secrets.token_hex(4)}.tmp"
    build.mkdir()
    try:
        records = BUILDERS[kind](run_dir, build)
        atomic_write_json(build / "eval.json", {"entry": name, "datasets": list(datasets), "evaluations": records})
        files = sorted([*(p.name for p in build.iterdir()), "MODEL.md", SUMS_FILE])
        atomic_write_text(build / "MODEL.md", model_card(name, files, records, datasets, trained_on, command,
                                                         wall_time, machine))
        atomic_write_text(build / SUMS_FILE, sums_text(build))
        verify_entry(build)
        old = dest.parent / f".{name}.{secrets.token_hex(4)}.old"
        if dest.exists():
            os.replace(dest, old)
        try:
            os.replace(build, dest)
        except OSError:
            if old.exists():
                os.replace(old, dest)
            raise
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(build, ignore_errors=True)
    return dest


def get_args_parser() -> argparse.ArgumentParser:
    """The command line (every flag explained in ``--help``)."""
    parser = argparse.ArgumentParser(
        prog="python -m deploy.package",
        description="Make a model-zoo entry (weights/NAME: weights loadable with weights_only=True, config.json, "
                    "metrics, eval.json, MODEL.md, SHA256SUMS) from a training run folder.")
    parser.add_argument("run_dir", metavar="RUN_DIR", help="the run folder (see --kind)")
    parser.add_argument("--name", required=True, help="entry name: the folder under the weights root")
    parser.add_argument("--kind", choices=KINDS, default=None,
                        help="mtcnn: a train_mtcnn.py --output-dir (pnet/, rnet/, onet/); embedder: a "
                             "train_facenet.py run (best.pt, matcher.json if tuned); system: the pipeline's runs/ "
                             "(mtcnn/, facenet/, system/) (default: found from the folder)")
    parser.add_argument("--root", metavar="DIR", default=None,
                        help="where entries live (default: $FACE_TOOLKIT_WEIGHTS, else the repository's weights/)")
    parser.add_argument("--force", action="store_true", help="replace an existing entry of that name")
    parser.add_argument("--dataset", action="append", default=[], choices=sorted(TERMS), dest="datasets",
                        help="a dataset it was trained on, whose terms MODEL.md states (repeatable)")
    parser.add_argument("--trained-on", required=True, metavar="TEXT", help="what it was trained on, for MODEL.md")
    parser.add_argument("--command", required=True, metavar="TEXT", help="the command that reproduces it")
    parser.add_argument("--wall-time", required=True, metavar="TEXT", help="how long that command took")
    parser.add_argument("--machine", required=True, metavar="TEXT", help="the machine it ran on")
    return parser


def main(args: argparse.Namespace) -> int:
    """Package the run, then say where the entry is and what it holds."""
    dest = package(args.run_dir, args.name, kind=args.kind, root=args.root, force=args.force, datasets=args.datasets,
                   trained_on=args.trained_on, command=args.command, wall_time=args.wall_time, machine=args.machine)
    files = sorted(p.name for p in dest.iterdir())
    size = sum(p.stat().st_size for p in dest.iterdir())
    print(f"{dest}: {len(files)} files, {size / 1e6:.1f} MB ({', '.join(files)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main, get_args_parser()))
