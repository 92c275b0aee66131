"""Config: defaults, override files, --set, validation errors, and the saved config round trip."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from config import Config, load_config
from tests.conftest import REPO
from utils.config_io import save_config
from utils.errors import ConfigError


def test_defaults_and_set_items_are_typed():
    config = load_config(None, ["detector.thresholds=0.5,0.6,0.7", "runtime.seed=3", "runtime.amp=false"])
    assert config.detector.thresholds == (0.5, 0.6, 0.7)
    assert config.runtime.seed == 3 and config.runtime.amp is False
    assert str(config.path("pnet")) == "runs/mtcnn/pnet/best.pt"


def test_paths_follow_data_root():
    config = load_config(None, ["paths.data_root=/data/faces"])
    assert str(config.path("wider_face")) == "/data/faces/synthetic_faces"


@pytest.mark.parametrize(
    "item, message",
    [
        ("runtime.sed=1", "unknown config key 'runtime.sed'"),
        ("nosuch.key=1", "unknown config key 'nosuch'"),
        ("runtime.seed=abc", "'runtime.seed': expected an integer"),
        ("runtime.amp=maybe", "'runtime.amp': expected true or false"),
        ("detector.scale_factor=1.5", "'detector.scale_factor': must be a finite number in (0, 1), got 1.5"),
        ("detector.thresholds=0.5,0.6", "'detector.thresholds': expected 3 values"),
        ("runtime.device=tpu", "'runtime.device'"),
        ("runtime=3", "is a section"),
        ("novalue", "--set expects section.key=value"),
    ],
)
def test_bad_values_are_one_line_errors(item, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, [item])
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_json_and_python_override_files(tmp_path):
    json_file = tmp_path / "c.json"
    json_file.write_text(json.dumps({"runtime": {"seed": 7}, "detector": {"min_face_size": 40}}))
    assert load_config(json_file).detector.min_face_size == 40.0
    py_file = tmp_path / "c.py"
    py_file.write_text("CONFIG = {'runtime': {'workers': 0}}\n")
    assert load_config(py_file, ["runtime.seed=5"]).runtime.workers == 0


def test_bad_override_files_name_the_file(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text('{"runtime": {"seed": 1,,}}')
    with pytest.raises(ConfigError, match=r"broken\.json:1: invalid JSON"):
        load_config(broken)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.json")
    no_dict = tmp_path / "nodict.py"
    no_dict.write_text("x = 1\n")
    with pytest.raises(ConfigError, match="must define a dict named CONFIG"):
        load_config(no_dict)


def test_saved_config_loads_back_unchanged(tmp_path):
    config = load_config(None, ["runtime.seed=11", "detector.thresholds=0.1,0.2,0.3"])
    save_config(config, tmp_path / "config.json")
    assert load_config(tmp_path / "config.json") == config
    assert load_config(tmp_path / "config.json") != Config()


@pytest.mark.parametrize("script", ["prepare_training_data.py", "train_mtcnn.py", "train_facenet.py",
                                    "train_matching.py", "test_system.py"])
def test_every_script_explains_its_flags(script):
    out = subprocess.run([sys.executable, str(REPO / script), "--help"], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    for flag in ("--config", "--set", "--device"):
        assert flag in out.stdout
