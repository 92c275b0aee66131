"""Embedder recipes side by side: the table and the accuracy-versus-time curve of finished training runs.

Train each recipe into its own folder at the same budget (README: "Recipes on real faces" gives the commands),
evaluate each best.pt on further pairs files with ``train_facenet.py --test-only``, then:

    .venv/bin/python -m bench.bench_recipes runs/cmp/triplet runs/cmp/cosface ... --plot docs/recipes.png

Per run it reads ``config.json`` (the recipe), ``metrics_train.csv`` (training seconds per epoch),
``metrics_val.csv`` (validation accuracy per epoch), ``report.json`` (steps, wall time, best validation) and
every ``test_*/eval.json``; it prints one markdown row per run (held-out accuracy of best.pt, then each test
set's) and plots validation accuracy against cumulative training minutes, one curve per run.
"""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Any

from config import load_config
from training.facenet.task import describe_loss
from utils.atomic import atomic_write_text
from utils.cli import run
from utils.errors import DataError
from utils.plots import plot_accuracy_over_time


def get_args_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="finished train_facenet.py run folders")
    parser.add_argument("--plot", type=Path, default=Path("bench/results/recipes.png"),
                        help="accuracy-versus-time PNG (default: bench/results/recipes.png)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows to this JSON file")
    return parser


def _read(path: Path) -> Any:
    if not path.is_file():
        raise DataError(path, "missing: is this a finished train_facenet.py run folder?")
    if path.suffix == ".csv":
        with path.open(newline="") as handle:
            return list(csv.DictReader(handle))
    return json.loads(path.read_text())


def summarize(folder: Path) -> dict[str, Any]:
    """One run's recipe, budget, held-out accuracy, test-set accuracies and its (minutes, accuracy) curve."""
    config = load_config(folder / "config.json")
    train, val = _read(folder / "metrics_train.csv"), _read(folder / "metrics_val.csv")
    report = _read(folder / "report.json")
    elapsed, minutes = 0.0, {}
    for row in train:
        elapsed += float(row["seconds"])
        minutes[row["epoch"]] = elapsed / 60
    curve = ([minutes[r["epoch"]] for r in val if r["epoch"] in minutes], [float(r["val_accuracy"]) for r in val])
    tests = {path.parent.name.removeprefix("test_"): _read(path)["accuracy"]
             for path in sorted(folder.glob("test_*/eval.json"))}
    return {"run": folder.name, "recipe": describe_loss(config.facenet), "steps": report["steps"],
            "minutes": report["seconds"] / 60, "held_out": report["best_validation"]["accuracy"],
            "held_out_auc": report["best_validation"]["auc"], "tests": tests, "curve": curve}


def table(rows: list[dict[str, Any]]) -> str:
    """The markdown table: one row per run, one column per test set found in any run."""
    tests = sorted({name for row in rows for name in row["tests"]})
    header = ["run", "recipe", "steps", "minutes", "held-out accuracy (AUC)", *tests]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["run"], row["recipe"], str(row["steps"]), f"{row['minutes']:.1f}",
                 f"{row['held_out']:.4f} ({row['held_out_auc']:.4f})",
                 *(f"{row['tests'][name]:.4f}" if name in row["tests"] else "" for name in tests)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    """Print the table of the runs and write their accuracy-versus-time plot."""
    rows = [summarize(folder) for folder in args.runs]
    print(table(rows))
    plot_accuracy_over_time(args.plot, {row["run"]: row["curve"] for row in rows},
                            title="held-out validation accuracy over training time")
    print(f"plot: {args.plot}")
    if args.json:
        atomic_write_text(args.json, json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main, get_args_parser()))
