"""What a matcher run shows and keeps: the methods side by side, their notes, ROC and score-histogram plots,
and report.json."""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from config import MatchingConfig
from datasets.identity import IdentityFolder
from models.matcher import ClassifierMatcher, ThresholdMatcher
from models.system import FaceRecognitionSystem
from training.matching.methods import MethodResult
from training.matching.pairs import PairSet
from utils.atomic import atomic_write_text
from utils.plots import plot_roc, plot_score_histograms

TYPICAL_COSINE_RANGE = (0.6, 0.8)  # a rule of thumb for the cosine threshold (README, "Match"); printed, not enforced


def side_by_side(results: Sequence[MethodResult], far_targets: Sequence[float]) -> str:
    """A plain-text table of every method's metrics, one column per method."""
    rows = [("accuracy (held-out folds)", lambda r: f"{r.accuracy:.4f} +- {r.accuracy_std:.4f}")]
    for key, label in (("precision", "precision"), ("recall", "recall"), ("f1", "F1"), ("auc", "ROC AUC"),
                       ("eer", "EER")):
        rows.append((label, lambda r, k=key: f"{r.metrics[k]:.4f}"))
    for far in far_targets:
        rows.append((f"TAR @ FAR={far:g}", lambda r, f=far: f"{r.metrics[f'tar@far={f:g}']:.4f}"))
    rows.append(("decision threshold", lambda r: f"{r.metrics['threshold']:.4f}"))
    rows.append(("FAR curve from", lambda r: f"{r.matcher.far_thresholds.get('negatives', 0)} diff. pairs"))
    for far in far_targets:
        rows.append((f"threshold @ FAR={far:g}", lambda r, f=far: f"{r.metrics[f'threshold@far={f:g}']:.4f}"))
    width = max(len(label) for label, _ in rows) + 2
    columns = [max(len(r.name), 18) + 2 for r in results]
    lines = [" " * width + "".join(r.name.ljust(c) for r, c in zip(results, columns))]
    for label, cell in rows:
        lines.append(label.ljust(width) + "".join(cell(r).ljust(c) for r, c in zip(results, columns)))
    return "\n".join(lines)


def write_plots(results: Sequence[MethodResult], pairs: PairSet, report_dir: Path) -> list[Path]:
    """ROC of every method on one plot, and same/different score histograms per method."""
    written = [plot_roc(report_dir / "roc.png", {r.name: r.roc for r in results},
                        title="validation pairs (held-out folds)")]
    for r in results:
        slug = r.name.split(" ")[0]
        xlabel = "calibrated probability" if isinstance(r.matcher, ClassifierMatcher) else r.name
        written.append(plot_score_histograms(report_dir / f"scores_{slug}.png", r.scores, pairs.same,
                                             threshold=r.metrics["threshold"], title=f"{r.name}: same vs different",
                                             xlabel=xlabel))
    return written


def print_comparison(results: Sequence[MethodResult], settings: MatchingConfig) -> None:
    """Print the side-by-side table, each method's notes and where a cosine threshold falls against the usual
    range."""
    print(side_by_side(results, settings.far_targets))
    for r in results:
        for note in r.notes:
            print(f"note ({r.name}): {note}")
    threshold_result = next((r for r in results if isinstance(r.matcher, ThresholdMatcher)), None)
    if threshold_result is not None and settings.metric == "cosine":
        low, high = TYPICAL_COSINE_RANGE
        where = "inside" if low <= threshold_result.metrics["threshold"] <= high else "outside"
        print(f"cosine-similarity threshold {threshold_result.metrics['threshold']:.4f} ({where} the usual "
              f"{low}-{high}; the right value depends on the embedder and its training)")


def write_report(report_dir: Path, results: Sequence[MethodResult], chosen: MethodResult, why: str,
                 pairs: PairSet, folder: IdentityFolder, system: FaceRecognitionSystem, *, output: Path,
                 embedder_path: Path, pairs_file: Path) -> None:
    """Write the plots and report.json (every method's metrics, the chosen one and why, the inputs and what was
    left out) into ``report_dir``."""
    plots = write_plots(results, pairs, report_dir)
    report = {
        "chosen": chosen.name, "chosen_because": why, "matcher": str(output), "embedder": str(embedder_path),
        "embedder_sha256": system.embedder_sha256, "pairs_file": str(pairs_file),
        "pairs_used": int(len(pairs.same)),
        "pairs_without_face": pairs.dropped, "identities_left_out": folder.left_out(),
        "bad_inputs": len(system.log),
        "bad_input_files": sorted({problem.path for problem in system.log.problems}),
        "methods": {r.name: {"accuracy": r.accuracy, "accuracy_std": r.accuracy_std, **r.metrics, "notes": r.notes}
                    for r in results},
        "plots": [str(p) for p in plots],
    }
    atomic_write_text(report_dir / "report.json", json.dumps(report, indent=2) + "\n")
