"""--amp auto for inference passes (issue 25): eager evaluation, Grad-CAM and lr-find time fp32 against
bf16 on their own first batches and keep bf16 only at 1.10x fp32's rate or more."""
import logging

import pytest
import torch

import tlearn.training.inference_precision as inference
from tlearn.infer.engine import predict_logits
from tlearn.models import create_model
from tlearn.runtime import Runtime, cpu_bf16_units

from conftest import TINY_MODEL, make_folder

CPU = torch.device("cpu")
NEEDS_BF16_UNITS = pytest.mark.skipif(not cpu_bf16_units(), reason="this CPU has no bf16 units (avx512_bf16 or "
                                                                   "AMX): --amp auto keeps fp32 and never times")
ROUNDS = inference.WARMUP_STEPS + inference.TIMED_BATCHES


def _runtime(candidate=torch.bfloat16) -> Runtime:
    return Runtime(CPU, None, False, amp_candidate=candidate, bf16_units=("avx512_bf16",))


def _inject(monkeypatch, seconds: dict[str, float]) -> list[str]:
    """Replace the clock: a batch takes seconds[precision]; returns the precisions run, in order."""
    ran = []

    def timed(forward, runtime):
        name = "bf16" if runtime.amp_dtype == torch.bfloat16 else "fp32"
        ran.append(name)
        return forward(runtime), seconds[name]

    monkeypatch.setattr(inference, "_timed", timed)
    return ran


def _forward(runtime: Runtime) -> str:
    return "bf16" if runtime.amp_dtype == torch.bfloat16 else "fp32"


@pytest.mark.parametrize("seconds, kept", [({"fp32": 1.0, "bf16": 0.5}, "bf16"),  # ResNet-50 on AMX
                                           ({"fp32": 1.0, "bf16": 0.95}, "fp32"),  # 1.05x: within the noise
                                           ({"fp32": 1.0, "bf16": 1.5}, "fp32")])  # Lite0's slowdown
def test_a_pass_times_its_first_batches_and_keeps_their_fp32_outputs(monkeypatch, seconds, kept):
    ran = _inject(monkeypatch, seconds)
    chooser = inference.InferencePrecision(_runtime(), batches=10, what="evaluation")
    outputs = [chooser.run(_forward, 8) for _ in range(10)]
    assert ran[:2 * ROUNDS] == ["fp32", "bf16"] * ROUNDS  # interleaved, the candidate thrown away
    assert outputs[:ROUNDS] == ["fp32"] * ROUNDS and outputs[ROUNDS:] == [kept] * (10 - ROUNDS)
    assert chooser.record["precision"] == kept
    assert chooser.record["fp32_images_per_s"] == pytest.approx(8 / seconds["fp32"])


def test_a_short_pass_or_no_candidate_is_not_timed(monkeypatch, caplog):
    ran = _inject(monkeypatch, {"fp32": 1.0, "bf16": 0.1})
    with caplog.at_level(logging.INFO, logger="tlearn"):
        short = inference.InferencePrecision(_runtime(), batches=inference.MIN_BATCHES - 1, what="Grad-CAM")
    assert [short.run(_forward, 8) for _ in range(3)] == ["fp32"] * 3 and ran == []
    assert "Grad-CAM: --amp auto: fp32" in caplog.text and "too few" in caplog.text
    on = inference.InferencePrecision(Runtime(CPU, torch.bfloat16, False), batches=50, what="evaluation")
    assert on.run(_forward, 8) == "bf16" and on.record is None and ran == []  # --amp on: bf16, untimed


def test_injected_rates_decide_and_the_log_says_both(caplog):
    chooser = inference.InferencePrecision(_runtime(), batches=20, what="evaluation")
    with caplog.at_level(logging.INFO, logger="tlearn"):
        chooser.decide_from({"fp32": [40.0, 44.0], "bf16": [80.0, 90.0]})
    assert chooser.runtime.amp_dtype == torch.bfloat16 and chooser.record["bf16_images_per_s"] == 85.0
    assert "evaluation: --amp auto: bf16 (fp32 42.0 img/s, bf16 85.0 img/s; bf16 at least 1.10x" in caplog.text


@NEEDS_BF16_UNITS
def test_eager_evaluation_under_auto_times_on_this_cpu_and_an_fp32_choice_changes_nothing(monkeypatch, caplog):
    model = create_model(TINY_MODEL, num_classes=3, weights="none").eval()
    batches = [(torch.randn(4, 3, 32, 32), torch.zeros(4)) for _ in range(inference.MIN_BATCHES)]
    expected = predict_logits(model, batches, Runtime(CPU, None, False))
    monkeypatch.setattr(inference, "choose_precision", lambda rates, candidate: "fp32")
    with caplog.at_level(logging.INFO, logger="tlearn"):
        logits = predict_logits(model, batches, _runtime())
    assert torch.equal(logits, expected)
    assert "evaluation: --amp auto: fp32 (fp32 " in caplog.text and "bf16 " in caplog.text


@NEEDS_BF16_UNITS
def test_grad_cam_runs_in_bf16_where_chosen():
    from tlearn.reports._grad_cam import grad_cam

    model = create_model(TINY_MODEL, num_classes=3, weights="none")
    images, classes = torch.randn(2, 3, 32, 32), torch.tensor([0, 2])
    fp32, bf16 = grad_cam(model, images, classes), grad_cam(model, images, classes, dtype=torch.bfloat16)
    assert bf16.shape == fp32.shape == (2, 32, 32) and bf16.dtype == torch.float32
    assert float(bf16.min()) >= 0.0 and float(bf16.max()) <= 1.0


def test_lr_find_under_auto_times_its_sweep_like_a_stage(tmp_path, monkeypatch):
    import tlearn.training.lr_find_command as command
    from tlearn.config import DataConfig, ModelConfig, RunConfig, TrainConfig

    seen = {}
    monkeypatch.setattr(command, "measure_step_rates", lambda *args, **kwargs: {"fp32": 5.0, "bf16": 10.0})
    monkeypatch.setattr(command, "setup_runtime", lambda *args: _runtime())
    monkeypatch.setattr(command, "find_stage_lr", lambda model, data, tc, runtime, *args, **kwargs:
                        seen.setdefault("runtime", runtime))
    monkeypatch.setattr(command, "write_finding", lambda finding, out: None)
    config = RunConfig(data=DataConfig(source=str(make_folder(tmp_path / "images")), image_size=32, batch_size=4,
                                       workers=0),
                       model=ModelConfig(name=TINY_MODEL, weights="none"),
                       train=TrainConfig(strategy="finetune", cache_dir=str(tmp_path)))
    command.lr_find(config, tmp_path / "out")
    assert seen["runtime"].amp_dtype == torch.bfloat16
