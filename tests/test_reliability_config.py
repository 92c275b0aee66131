"""Reliability: config values outside a key's declared range are refused when the config loads, before anything
is read or written: one line naming the key and the rule, exit code 2, no traceback (issue 16)."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from config import Config, load_config
from tests.conftest import REPO
from utils.errors import ConfigError

HUGE = "99999999999999999999999"


def _base(tp: typing.Any) -> typing.Any:
    """The type under an ``Annotated`` range."""
    return typing.get_args(tp)[0] if typing.get_origin(tp) is typing.Annotated else tp


def _keys(section: typing.Any, prefix: str) -> list[tuple[str, typing.Any]]:
    """(dotted key, field type) of every value key under ``section``, nested sections included."""
    hints = typing.get_type_hints(type(section), include_extras=True)
    keys = []
    for item in dataclasses.fields(section):
        value = getattr(section, item.name)
        if dataclasses.is_dataclass(value):
            keys += _keys(value, f"{prefix}{item.name}.")
        else:
            keys.append((f"{prefix}{item.name}", _base(hints[item.name])))
    return keys


def _bad_values(key: str, tp: typing.Any) -> list[str]:
    """Out-of-range ``--set`` values for a numeric or list key: negative, not finite, empty, a huge seed."""
    if tp in (int, float):
        return ["-1", "nan", "inf", "-inf"] + ([HUGE] if key.endswith("seed") else [])
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        length = 1 if args[-1] is Ellipsis else len(args)
        return ["", ",".join(["-1"] * length), ",".join(["nan"] * length), ",".join(["inf"] * length)]
    return []


CASES = [(key, value) for key, tp in _keys(Config(), "") for value in _bad_values(key, tp)]


def test_the_sweep_covers_every_section() -> None:
    sections = {key.split(".")[0] for key, _ in CASES}
    assert sections == {f.name for f in dataclasses.fields(Config)} - {"paths"}  # paths holds strings only
    assert ("runtime.seed", HUGE) in CASES and ("matching.far_targets", "") in CASES and len(CASES) > 500


@pytest.mark.parametrize("key, value", CASES)
def test_reliability_out_of_range_values_are_one_line_errors(key: str, value: str, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        load_config(None, [f"{key}={value}"])
    message = str(info.value)
    assert "\n" not in message
    assert f"'{key}'" in message or f"'{key.rsplit('.', 1)[0]}." in message, message
    assert not any(tmp_path.iterdir()), "nothing is written"


def test_reliability_the_rule_is_named() -> None:
    for item, message in [
        ("facenet.lr=-1", "config key 'facenet.lr': must be a finite number > 0, got -1.0"),
        ("facenet.lr=nan", "config key 'facenet.lr': must be a finite number, got 'nan'"),
        (f"runtime.seed={HUGE}", f"config key 'runtime.seed': must be an integer in [0, 4294967295], got {HUGE}"),
        ("matching.far_targets=", "config key 'matching.far_targets': must be a list of at least one value, got ()"),
        ("matching.far_targets=0.1,2", "config key 'matching.far_targets': each value must be a finite number in "
                                       "(0, 1), got (0.1, 2.0)"),
        ("mtcnn.onet.size=36", "config key 'mtcnn.onet.size': must be an integer in {12, 24, 48}, got 36"),
    ]:
        with pytest.raises(ConfigError) as info:
            load_config(None, [item])
        assert str(info.value) == message


def test_reliability_values_in_range_still_load() -> None:
    config = load_config(None, ["facenet.lr=0.5", f"runtime.seed={2**32 - 1}", "matching.far_targets=0.1",
                                "mtcnn.onet.size=48", "matching.folds=0", "facenet.dropout=0"])
    assert (config.facenet.lr, config.runtime.seed, config.matching.far_targets) == (0.5, 2**32 - 1, (0.1,))


def _script(tmp_path: Path, script: str, *argv: str) -> subprocess.CompletedProcess:
    """Run ``script`` as a user would, from an empty folder (so anything it writes would show there)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(REPO / script), *argv], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("script, argv, message", [
    ("train_facenet.py", ["--set", "facenet.lr=-1"], "config key 'facenet.lr': must be a finite number > 0"),
    ("train_mtcnn.py", ["--seed", HUGE], "config key 'runtime.seed': must be an integer in [0, 4294967295]"),
    ("train_matching.py", ["--set", "matching.far_targets="], "config key 'matching.far_targets': must be a list"),
])
def test_reliability_scripts_refuse_bad_values_before_writing(script: str, argv: list[str], message: str,
                                                              tmp_path: Path) -> None:
    done = _script(tmp_path, script, *argv)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {message}"), done.stderr[-2000:]
    assert not any(tmp_path.iterdir()), "nothing is written"


def test_reliability_a_config_file_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "latin1.json"
    bad.write_bytes('{"paths": {"data_root": "données"}}'.encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1\.json: not UTF-8 text"):
        load_config(bad)
    done = _script(tmp_path, "train_facenet.py", "--config", str(bad))
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {bad}: not UTF-8 text (byte "), done.stderr[-2000:]
    assert [p.name for p in tmp_path.iterdir()] == ["latin1.json"]
