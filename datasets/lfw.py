"""LFW: the ``pairs.txt`` verification protocol file and the ``<images>/<Name>/<Name>_NNNN.jpg`` layout.

pairs.txt (View 2) starts with ``<folds>\\t<n>``; each fold is then n matched lines ``name i j`` followed
by n mismatched lines ``name_a i name_b j``. View 1 files (pairsDevTrain/Test) have only ``<n>`` and one
fold. Folds are kept in file order, as the protocol requires.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from datasets.textfile import parse_int, read_text_lines, report
from utils.atomic import atomic_write_text
from utils.errors import BadInputLog, DataError


@dataclass(frozen=True)
class Pair:
    """Two LFW images, ``<name>_<index:04d>.jpg``; ``line`` is where it came from (not part of equality)."""

    name_a: str
    index_a: int
    name_b: str
    index_b: int
    line: int | None = field(default=None, compare=False)

    @property
    def same(self) -> bool:
        """Whether both images show the same person (a matched pair)."""
        return self.name_a == self.name_b


@dataclass
class PairsFile:
    """A parsed pairs file: ``folds`` in file order, each with ``pairs_per_fold`` matched and as many mismatched."""

    num_folds: int
    pairs_per_fold: int  # n: the header's second number; every fold holds n same + n different pairs
    folds: list[list[Pair]]
    path: Path | None = None

    @property
    def pairs(self) -> list[Pair]:
        """All pairs, fold after fold, in file order."""
        return [pair for fold in self.folds for pair in fold]


def _parse_pair(path: Path, line: int, tokens: list[str]) -> Pair:
    """One pair line: 3 fields for a matched pair, 4 for a mismatched one."""
    if len(tokens) == 3:
        name_a, a, b = tokens
        name_b = name_a
    elif len(tokens) == 4:
        name_a, a, name_b, b = tokens
    else:
        raise DataError(path, f"expected 3 fields (name i j) or 4 (name i name j), found {len(tokens)}", line=line)
    index_a = parse_int(a, path, line, "image number", minimum=1)
    index_b = parse_int(b, path, line, "image number", minimum=1)
    if len(tokens) == 4 and name_a == name_b:
        raise DataError(path, f"mismatched-pair line names the same person twice ({name_a})", line=line)
    return Pair(name_a, index_a, name_b, index_b, line=line)


def read_pairs(path: str | Path) -> PairsFile:
    """Read an LFW pairs file; any malformed line, or folds that do not match the header, raise DataError."""
    path = Path(path)
    lines = [(n, text.split()) for n, text in enumerate(read_text_lines(path), start=1) if text.strip()]
    if not lines:
        raise DataError(path, "pairs file is empty")
    header_line, header = lines[0]
    if len(header) not in (1, 2):
        raise DataError(path, f"expected a header '<folds> <n>' or '<n>', found {len(header)} fields", line=header_line)
    num_folds = parse_int(header[0], path, header_line, "fold count", minimum=1) if len(header) == 2 else 1
    per_fold = parse_int(header[-1], path, header_line, "pairs per fold", minimum=1)
    pairs = [_parse_pair(path, n, tokens) for n, tokens in lines[1:]]
    if len(pairs) != 2 * per_fold * num_folds:
        raise DataError(path, f"header promises {num_folds} fold(s) of {per_fold} same + {per_fold} different "
                              f"pairs ({2 * per_fold * num_folds} lines), file has {len(pairs)}", line=header_line)
    folds = [pairs[k * 2 * per_fold:(k + 1) * 2 * per_fold] for k in range(num_folds)]
    for number, fold in enumerate(folds, start=1):
        same = sum(pair.same for pair in fold)
        if same != per_fold:
            raise DataError(path, f"fold {number} has {same} same and {len(fold) - same} different pairs, "
                                  f"the header says {per_fold} of each", line=fold[0].line)
    return PairsFile(num_folds, per_fold, folds, path)


def _pair_line(pair: Pair) -> str:
    """The tab-separated pairs.txt line of ``pair``."""
    fields = [pair.name_a, str(pair.index_a)] + ([] if pair.same else [pair.name_b]) + [str(pair.index_b)]
    if any(len(f.split()) != 1 for f in fields):
        raise ValueError(f"pair {pair} has a name with whitespace")
    return "\t".join(fields)


def write_pairs(path: str | Path, folds: Sequence[Sequence[Pair]]) -> None:
    """Write folds atomically as LFW View 2: header ``<folds>\\t<n>``, per fold n same then n different lines.

    Every fold must hold the same number n of same and of different pairs (ValueError otherwise).
    """
    if not folds:
        raise ValueError("write_pairs needs at least one fold")
    per_fold = sum(pair.same for pair in folds[0])
    lines = [f"{len(folds)}\t{per_fold}"]
    for number, fold in enumerate(folds, start=1):
        same = [pair for pair in fold if pair.same]
        different = [pair for pair in fold if not pair.same]
        if len(same) != per_fold or len(different) != per_fold:
            raise ValueError(f"fold {number} has {len(same)} same and {len(different)} different pairs; "
                             f"every fold needs {per_fold} of each")
        lines += [_pair_line(pair) for pair in same + different]
    atomic_write_text(path, "".join(line + "\n" for line in lines))


def lfw_image_path(images_root: str | Path, name: str, index: int) -> Path:
    """``<images_root>/<name>/<name>_<index:04d>.jpg``."""
    return Path(images_root) / name / f"{name}_{index:04d}.jpg"


def check_pairs_images(pairs: PairsFile | Sequence[Pair], images_root: str | Path, *,
                       log: BadInputLog | None = None) -> list[Pair]:
    """The pairs whose two images exist; each pair with a missing image is raised or reported through
    ``log``, once, by its pairs-file line."""
    source = pairs.path if isinstance(pairs, PairsFile) else None
    found = []
    for pair in pairs.pairs if isinstance(pairs, PairsFile) else pairs:
        images = [lfw_image_path(images_root, pair.name_a, pair.index_a),
                  lfw_image_path(images_root, pair.name_b, pair.index_b)]
        missing = [str(image) for image in images if not image.is_file()]
        if not missing:
            found.append(pair)
            continue
        message = f"pair names missing image(s): {', '.join(missing)}"
        if source is None:
            at = f" (pairs line {pair.line})" if pair.line is not None else ""
            report(log, DataError(missing[0], f"image of a pair not found{at}"))
        else:
            report(log, DataError(source, message, line=pair.line))
    return found
