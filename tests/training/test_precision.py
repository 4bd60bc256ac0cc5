"""--amp auto|on|off (issue 25): bf16 on CPUs with bf16 units, chosen per training stage by timing."""
import json
import random

import pytest
import torch
from safetensors.torch import load_file

import tlearn.training._precision as precision
import tlearn.training._precision_rule as rule
from tlearn.cli._flags import config_from_flags
from tlearn.cli._parser import build_parser
from tlearn.config import TrainConfig
from tlearn.errors import ConfigError
from tlearn.models import create_model
from tlearn.runtime import Runtime, amp_dtypes, cpu_bf16_units

from conftest import TINY_MODEL, make_folder, run_cli

CPU = torch.device("cpu")
NEEDS_BF16_UNITS = pytest.mark.skipif(not cpu_bf16_units(), reason="this CPU has no bf16 units (avx512_bf16 or "
                                                                   "AMX): --amp auto keeps fp32 and never times")


def test_bf16_is_kept_only_when_faster_by_the_margin():
    assert precision.choose_precision({"fp32": 10.0, "bf16": 11.0}, "bf16") == "bf16"
    assert precision.choose_precision({"fp32": 10.0, "bf16": 10.9}, "bf16") == "fp32"
    assert precision.choose_precision({"fp32": 10.0, "bf16": 6.5}, "bf16") == "fp32"  # Lite0's slowdown
    assert precision.choose_precision({"fp32": 4.7, "bf16": 9.2}, "bf16") == "bf16"  # ResNet-50's doubling


def _runtime(candidate=torch.bfloat16) -> Runtime:
    return Runtime(CPU, None, False, amp_candidate=candidate, bf16_units=("avx512_bf16",))


def test_a_stage_times_once_and_a_resumed_stage_keeps_its_choice():
    calls, chosen = [], {}

    def measure():  # injected timings: bf16 twice as fast
        calls.append(1)
        return {"fp32": 5.0, "bf16": 10.0}

    runtime = precision.stage_runtime(_runtime(), TrainConfig(), chosen, "1", measure)
    assert runtime.amp_dtype == torch.bfloat16 and len(calls) == 1
    assert chosen["1"]["precision"] == "bf16" and chosen["1"]["bf16_images_per_s"] == 10.0
    resumed = json.loads(json.dumps(chosen))  # as the committed progress brings it back
    again = precision.stage_runtime(_runtime(), TrainConfig(), resumed, "1", measure)
    assert again.amp_dtype == torch.bfloat16 and len(calls) == 1  # not timed again

    slower = precision.stage_runtime(_runtime(), TrainConfig(), chosen, "2", lambda: {"fp32": 15.0, "bf16": 9.0})
    assert slower.amp_dtype is None and chosen["2"]["precision"] == "fp32"


def test_no_timing_under_deterministic_on_features_or_without_a_candidate():
    def never():
        raise AssertionError("timed")

    chosen = {}
    assert precision.stage_runtime(_runtime(), TrainConfig(deterministic=True), chosen, "0", never).amp_dtype is None
    assert "--deterministic" in chosen["0"]["reason"]
    assert precision.stage_runtime(_runtime(), TrainConfig(), chosen, "1", None).amp_dtype is None
    assert chosen["1"]["precision"] == "fp32"
    plain = _runtime(candidate=None)
    assert precision.stage_runtime(plain, TrainConfig(), chosen, "2", never) is plain and "2" not in chosen


def test_timing_leaves_the_model_and_the_random_state_as_they_were():
    model = create_model(TINY_MODEL, num_classes=3, weights="none")
    before = {name: value.clone() for name, value in model.state_dict().items()}
    batch = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    random.seed(1)
    torch.manual_seed(1)
    expected = torch.rand(3), random.random()
    random.seed(1)
    torch.manual_seed(1)
    rates = precision.measure_step_rates(model, batch, torch.nn.CrossEntropyLoss(), _runtime(), TrainConfig())
    assert set(rates) == {"fp32", "bf16"} and all(rate > 0 for rate in rates.values())
    assert torch.equal(torch.rand(3), expected[0]) and random.random() == expected[1]
    assert all(torch.equal(before[name], value) for name, value in model.state_dict().items())


def test_which_precision_each_device_and_mode_gets():
    units = ("avx512_bf16",)
    assert amp_dtypes(CPU, "auto", None, ()) == (None, None)  # no units: fp32, nothing to time
    assert amp_dtypes(CPU, "auto", None, units) == (None, torch.bfloat16)
    assert amp_dtypes(CPU, "on", None, units) == (torch.bfloat16, None)
    assert amp_dtypes(CPU, "off", None, units) == (None, None)
    assert amp_dtypes(CPU, True, None, units) == (torch.bfloat16, None)  # configs from before auto
    with pytest.raises(ConfigError, match="no bf16 units"):
        amp_dtypes(CPU, "on", None, ())
    with pytest.raises(ConfigError, match="fp16 needs a CUDA"):
        amp_dtypes(CPU, "on", "fp16", units)
    with pytest.raises(ConfigError, match="MPS"):
        amp_dtypes(torch.device("mps"), "on", None, ())


def test_the_flag_alone_is_on_and_auto_is_the_default():
    parser = build_parser()
    base = ["train", "--data", "digits"]
    assert config_from_flags(parser.parse_args(base)).train.amp == "auto"
    assert config_from_flags(parser.parse_args([*base, "--amp"])).train.amp == "on"
    assert config_from_flags(parser.parse_args([*base, "--amp", "off"])).train.amp == "off"
    assert TrainConfig(amp=False).amp == "off" and TrainConfig(amp=True).amp == "on"  # older config.yaml
    with pytest.raises(ConfigError, match="--amp"):
        TrainConfig(amp="sometimes")


TRAIN = ["--model", TINY_MODEL, "--weights", "none", "--image-size", "32", "--batch-size", "4", "--workers", "0",
         "--no-report", "--strategy", "two-stage", "--head-epochs", "1", "--epochs", "1"]


@NEEDS_BF16_UNITS
def test_auto_choosing_fp32_trains_bit_identically_to_amp_off(tmp_path, monkeypatch):
    from tlearn import api

    folder = make_folder(tmp_path / "images")
    parser = build_parser()

    def train(mode: str):
        args = parser.parse_args(["train", "--data", str(folder), *TRAIN, "--amp", mode])
        summary, run = api.train(config_from_flags(args), tmp_path / mode)
        return summary, load_file(run / "model.safetensors")

    monkeypatch.setattr(rule, "MARGIN", 1e9)  # bf16 never wins: the timed steps must leave no trace
    summary, auto = train("auto")
    assert summary["amp"]["stages"]["1"]["precision"] == "fp32"
    assert summary["amp"]["bf16_units"] == list(cpu_bf16_units())
    _, off = train("off")
    assert auto.keys() == off.keys() and all(torch.equal(auto[name], off[name]) for name in auto)


@NEEDS_BF16_UNITS
def test_auto_keeps_bf16_where_it_wins(tmp_path, monkeypatch):
    from tlearn import api

    monkeypatch.setattr(rule, "MARGIN", 0.0)  # bf16 always wins
    args = build_parser().parse_args(["train", "--data", str(make_folder(tmp_path / "images")), *TRAIN])
    summary, _ = api.train(config_from_flags(args), tmp_path / "run")
    assert summary["amp"]["mode"] == "auto" and summary["amp"]["stages"]["1"]["precision"] == "bf16"
    assert set(summary["amp"]["stages"]) == {"1"}  # the head's L-BFGS solve on cached features runs no steps
    assert summary["val_top1"] > 0


@NEEDS_BF16_UNITS
def test_amp_on_trains_in_bf16_on_this_cpu_and_logs_its_units(tmp_path):
    folder = make_folder(tmp_path / "images")
    result = run_cli("train", "--data", str(folder), *TRAIN, "--amp", "--out", str(tmp_path / "on"))
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "on" / "summary.json").read_text())
    assert summary["amp"]["dtype"] == "bf16" and summary["amp"]["bf16_units"]
    assert "CPU bf16 units: avx512_bf16" in result.stderr + result.stdout


def test_feature_extraction_on_cpu_stays_fp32_under_amp_on():
    """onnxruntime's fp32 graph extracts; its parity check against bf16 PyTorch would fail and fall back."""
    from tlearn.features import FeatureExtractor

    extractor = FeatureExtractor(Runtime(CPU, torch.bfloat16, False, bf16_units=("avx512_bf16",)))
    assert extractor.runtime.amp_dtype is None
