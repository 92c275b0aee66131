"""The figures of a model-zoo entry as one markdown table: what ``python -m deploy.evaluate`` prints, what an
entry's MODEL.md shows from its ``eval.json``, and what the README's "Models" section lists.

A *record* is one evaluation: ``{"task": ..., "data": ..., "figures": {...}}``. Tasks: ``detection`` (a
cascade on WIDER-format images: ``training.mtcnn.cascade.evaluate``'s report), ``fddb``
(``evaluate_fddb``'s), ``verification`` (the LFW protocol: ``VerificationResult.as_dict()``, plus the matcher's
accuracy when there is one), ``matching`` (``train_matching.py``'s report) and ``system`` (``test_system.py``'s).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

TABLE_HEADER = ("| entry | task | data | figures |", "|---|---|---|---|")


def wider_data(root: str | Path, holdout_every: int) -> str:
    """How WIDER-format evaluation images were chosen, in words."""
    split = f"every {holdout_every}th training image" if holdout_every > 0 else "the WIDER_val split"
    return f"WIDER-format `{Path(root).name}`, {split}"


def pairs_data(path: str | Path) -> str:
    """A pairs file (or test set) by its folder and name, in words."""
    return f"pairs `{Path(path).parent.name}/{Path(path).name}`"


def _count(n: int, noun: str) -> str:
    """``n`` and the noun, plural unless n is 1."""
    return f"{n:g} {noun}{'' if n == 1 else 's'}"


def _number(value: Any) -> str:
    """A figure to 4 decimals, or "n/a" when it is missing or not finite."""
    return f"{value:.4f}" if isinstance(value, (int, float)) and math.isfinite(value) else "n/a"


def _detection(f: dict[str, Any]) -> str:
    stages = f.get("stages", {})
    parts = [f"AP@{f['iou_threshold']:g} **{_number(f['ap'])}**",
             f"recall after {' / '.join(s[0].upper() for s in stages)} "
             f"{' / '.join(_number(s['recall']) for s in stages.values())}",
             f"precision {_number(f['precision'])} at score ≥ {f['operating_threshold']:g}"]
    if f.get("subsets"):
        parts.append(f"{' / '.join(f['subsets'])} AP {' / '.join(_number(v) for v in f['subsets'].values())}")
    if "landmark_nme" in f:
        parts.append(f"landmark NME {_number(f['landmark_nme'])}")
    return "; ".join(parts)


def _fddb(f: dict[str, Any]) -> str:
    return (f"TPR **{_number(f['fddb_tpr_at_1000_fp'])}** at 1,000 false positives, "
            f"{_number(f['fddb_tpr_at_2000_fp'])} at 2,000")


def _verification(f: dict[str, Any]) -> str:
    text = (f"accuracy **{_number(f['accuracy'])}** ± {_number(f['accuracy_std'])} ({f['num_folds']:g} folds), "
            f"AUC {_number(f['auc'])}")
    if "matcher_accuracy" in f:
        text += f"; its matcher ({f['matcher']}): accuracy {_number(f['matcher_accuracy'])}"
        if f.get("matcher_promised_far") is not None:
            text += f", FAR {_number(f['matcher_far'])} (promised {_number(f['matcher_promised_far'])})"
    return text


def _matching(f: dict[str, Any]) -> str:
    chosen = f["methods"][f["chosen"]]
    return f"{f['chosen']} (kept): accuracy **{_number(chosen['accuracy'])}** ± {_number(chosen['accuracy_std'])}"


def _system(f: dict[str, Any]) -> str:
    return ", ".join(f"{name} {_number(check['value'])} ({'ok' if check['passed'] else 'MISSED'})"
                     for name, check in f["checks"].items())


FORMATTERS = {"detection": _detection, "fddb": _fddb, "verification": _verification, "matching": _matching,
              "system": _system}


def data_text(record: dict[str, Any]) -> str:
    """The data cell: the record's description and how much of it was scored."""
    f, task = record["figures"], record["task"]
    if task == "detection":
        counts = f"{_count(f['images'], 'image')}, {_count(f['faces'], 'face')} ≥ {f['min_face_size']:g} px"
    elif task == "fddb":
        counts = f"{_count(f['fddb_images'], 'image')}, {_count(f['fddb_faces'], 'face')}"
    elif task == "verification":
        counts = _count(f["num_pairs"], "pair") + (f", {f['pairs_without_face']} without a face"
                                                   if f.get("pairs_without_face") else "")
    elif task == "matching":
        counts = _count(f["pairs_used"], "pair")
    else:
        counts = _count(f["images"], "image")
    return f"{record['data']} ({counts})"


def figures_table(entry: str, records: Sequence[dict[str, Any]]) -> str:
    """The markdown table of an entry's evaluations, one row per record."""
    rows = [f"| {entry} | {r['task']} | {data_text(r)} | {FORMATTERS[r['task']](r['figures'])} |" for r in records]
    return "\n".join([*TABLE_HEADER, *rows])
