"""`tlearn export --quantize int8`: the int8 graph and its sidecar when the gate passes; a refusal
(exit 2, the figures, no file) when int8 loses accuracy; the int8 graph served and predicted with."""
import json

import pytest
import torch

import tlearn
from tlearn.cli import main
from tlearn.infer import quantize as quantize_module
from tlearn.infer.engines import INT8_FILE, open_engine
from tlearn.run_folder.guard import RUN_FOLDERS

from conftest import make_folder, train_tiny


@pytest.fixture(scope="module")
def learned_run(tmp_path_factory):
    """Three classes of distinct colours: the model learns them, so a broken int8 graph shows."""
    root = tmp_path_factory.mktemp("int8")
    data = make_folder(root / "data", per_class=12, split_dirs=True)
    _, run = train_tiny(root, data, strategy="finetune", epochs=4, report=False)
    return run, data


def test_int8_export_passes_the_gate_and_records_it(learned_run, capsys):
    run, data = learned_run
    assert main(["export", str(run), "--format", "onnx", "--quantize", "int8", "--max-drop", "100"]) == 0
    out = capsys.readouterr().out
    assert "accuracy gate passed" in out and "batch-1" in out
    path = run / "export" / INT8_FILE
    sidecar = json.loads((run / "export" / f"{INT8_FILE}.json").read_text())
    gate = sidecar["gate"]
    assert gate["metric"] == "top-1" and gate["images"] == 9 and gate["calibration_images"] == 27
    assert set(gate["latency"]) == {"fp32", "int8"} and gate["latency"]["int8"]["batch_32_ms"] > 0
    assert 0 <= gate["agreement"] <= 1 and sidecar["quantization"]["weights"] == "int8 per channel"
    assert sidecar["classes"] == ["cat", "dog", "fox"] and INT8_FILE in RUN_FOLDERS["export"]
    import onnx

    graph = onnx.load(str(path))
    assert any(node.op_type == "QuantizeLinear" for node in graph.graph.node)  # quantized, not a copy
    model = tlearn.load(run).model
    engine = open_engine(model, run, "int8")
    assert engine.name == "onnxruntime int8"
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    assert engine.logits(images).shape == (5, 3)


def test_gate_refuses_an_int8_graph_that_loses_accuracy(learned_run, tmp_path, monkeypatch, capsys):
    run, _ = learned_run
    baseline = quantize_module.calibration_inputs
    # calibrated on blank images, the activations' ranges are far too narrow: int8 clips everything
    monkeypatch.setattr(quantize_module, "calibration_inputs", lambda *args: torch.zeros_like(baseline(*args)))
    output = tmp_path / "refused.int8.onnx"
    assert main(["export", str(run), "--quantize", "int8", "--output", str(output)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("tlearn: error: int8 loses") and "top-1 fp32" in error and error.count("\n") == 1
    assert "no int8 file written" in error and not output.exists() and not list(tmp_path.iterdir())


def test_int8_graph_served_and_checked(learned_run, tmp_path):
    from fastapi.testclient import TestClient

    from tlearn.serve import ServeSettings, create_app

    run, data = learned_run
    if not (run / "export" / INT8_FILE).exists():
        pytest.skip("needs the int8 graph of the test before")
    image = next((data / "val" / "fox").iterdir()).read_bytes()
    with TestClient(create_app(run, ServeSettings(engine="int8"))) as client:
        assert client.get("/metadata").json()["engine"] == "onnxruntime int8"
        assert client.post("/predict", content=image).json()["predictions"][0]["label"] in {"cat", "dog", "fox"}
    other = tmp_path / "other.onnx"
    other.write_bytes((run / "export" / INT8_FILE).read_bytes())
    with pytest.raises(tlearn.UserError, match="no readable sidecar"):
        open_engine(tlearn.load(run).model, run, str(other))


def test_predict_through_the_engines_equals_pytorch(learned_run, tmp_path):
    import csv

    run, data = learned_run
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    outputs = {}
    for engine in ("torch", "onnx", "int8"):
        if engine == "int8" and not (run / "export" / INT8_FILE).exists():
            continue
        out = tmp_path / f"{engine}.csv"
        assert main(["predict", str(run), str(data / "val"), str(broken), "--engine", engine, "--top-k", "2",
                     "--batch-size", "4", "--output", str(out)]) == 0
        outputs[engine] = list(csv.reader(out.open()))
    eager, onnx = outputs["torch"], outputs["onnx"]
    assert len(eager) == 1 + 9 and [row[0] for row in onnx] == [row[0] for row in eager]  # the broken file listed apart
    for row, other in zip(eager[1:], onnx[1:]):
        assert (row[1], row[3]) == (other[1], other[3])
        assert abs(float(row[2]) - float(other[2])) < 1e-4
    if "int8" in outputs:
        assert [row[0] for row in outputs["int8"]] == [row[0] for row in eager]
    assert main(["predict", str(run), str(data / "val"), "--engine", "int8", "--tta"]) == 2



def test_eval_runs_the_int8_graph_near_the_fp32_figures(learned_run, capsys):
    run, data = learned_run
    if not (run / "export" / INT8_FILE).exists():
        pytest.skip("needs the int8 graph of the first test")
    figures = {}
    for engine in ("torch", "onnx", "int8"):
        assert main(["eval", str(run), "--data", str(data), "--engine", engine, "--json", "--workers", "0"]) == 0
        figures[engine] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    gate = json.loads((run / "export" / f"{INT8_FILE}.json").read_text())["gate"]
    assert figures["onnx"]["top1"] == figures["torch"]["top1"]  # the fp32 graph answers as PyTorch does
    assert 100 * figures["int8"]["top1"] == pytest.approx(gate["int8"], abs=0.01)  # what the gate measured
    assert 100 * figures["torch"]["top1"] == pytest.approx(gate["fp32"], abs=0.01)
    assert abs(figures["int8"]["top1"] - figures["torch"]["top1"]) <= 0.34  # 9 images: at most 3 answers differ
    assert "ece" in figures["int8"]  # calibrated by the run's temperature, whatever the engine
    assert main(["eval", str(run), "--data", str(data), "--engine", "int8", "--tta"]) == 2
    assert "--tta runs in PyTorch" in capsys.readouterr().err


class _SamePadded(torch.nn.Module):
    """Lite0's pattern in small: TF-"same" stride-2 convolutions (timm's Conv2dSame: a Pad whose
    amounts come from the input's shape at run time, asymmetric for the 5x5 one), and one reflect
    pad, which no convolution can take."""

    def __init__(self):
        super().__init__()
        from timm.layers import Conv2dSame

        self.stem = Conv2dSame(3, 8, 3, stride=2)
        self.depthwise = Conv2dSame(8, 8, 5, stride=2, groups=8)
        self.pointwise = torch.nn.Conv2d(8, 4, 3)

    def forward(self, images):
        features = torch.nn.functional.relu6(self.depthwise(torch.nn.functional.relu6(self.stem(images))))
        return self.pointwise(torch.nn.functional.pad(features, (1, 1, 1, 1), mode="reflect")).mean((2, 3))


def test_padding_folded_into_the_convolutions_computes_the_same(tmp_path):
    import numpy as np
    import onnx
    import onnxruntime as ort

    from tlearn.infer._pad_folding import fold_pads
    from tlearn.infer.graph import export_graph

    torch.manual_seed(0)
    images = torch.randn(3, 3, 32, 32)
    export_graph(_SamePadded().eval(), images, tmp_path / "unfolded.onnx")  # fixed size, symbolic batch
    assert fold_pads(tmp_path / "unfolded.onnx", tmp_path / "folded.onnx") == 2
    graph = onnx.load(str(tmp_path / "folded.onnx")).graph
    pads = [node for node in graph.node if node.op_type == "Pad"]
    assert [onnx.helper.get_attribute_value(pads[0].attribute[0])] == [b"reflect"]  # left where it was
    assert {"Shape", "Gather", "Ceil"}.isdisjoint(node.op_type for node in graph.node)  # no run-time arithmetic
    conv_pads = [list(attribute.ints) for node in graph.node if node.op_type == "Conv"
                 for attribute in node.attribute if attribute.name == "pads"]
    assert [0, 0, 1, 1] in conv_pads and [1, 1, 2, 2] in conv_pads  # 32 px: asymmetric same-padding
    outputs = [ort.InferenceSession(str(tmp_path / name)).run(None, {"images": images.numpy()})[0]
               for name in ("unfolded.onnx", "folded.onnx")]
    np.testing.assert_allclose(outputs[1], outputs[0], rtol=1e-5, atol=1e-5)
    without_reflect = _SamePadded().eval()
    without_reflect.forward = lambda x: without_reflect.depthwise(without_reflect.stem(x)).mean((2, 3))
    export_graph(without_reflect, images, tmp_path / "same_only.onnx")
    fold_pads(tmp_path / "same_only.onnx", tmp_path / "same_only.folded.onnx")
    assert not [node for node in onnx.load(str(tmp_path / "same_only.folded.onnx")).graph.node if node.op_type == "Pad"]


def test_a_float_input_graph_through_the_engine_gives_pytorchs_logits(learned_run, tmp_path):
    """GraphEngine normalises uint8 images for a float-input graph (the exported file, the int8 one)
    in numpy, not torch: the logits must stay PyTorch's."""
    from tlearn.infer.engines import TorchEngine

    run, _ = learned_run
    assert main(["export", str(run), "--format", "onnx", "--output", str(tmp_path / "model.onnx")]) == 0
    model = tlearn.load(run).model
    engine = open_engine(model, run, str(tmp_path / "model.onnx"))
    assert engine.float_input
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(engine.logits(images), TorchEngine(model).logits(images), rtol=1e-4, atol=1e-4)


def test_the_int8_graph_is_quantized_from_the_folded_graph(tmp_path, monkeypatch):
    """No fp32 Pad left between a Dequantize and a Quantize; when the pass fails, the graph is
    quantized as exported."""
    import onnx

    from tlearn.infer.graph import export_graph

    torch.manual_seed(0)
    calibration = torch.randn(8, 3, 32, 32)
    module = _SamePadded().eval()
    module.forward = lambda x: module.depthwise(module.stem(x)).mean((2, 3))
    export_graph(module, calibration[:3], tmp_path / "fp32.onnx")
    operators = lambda path: [node.op_type for node in onnx.load(str(path)).graph.node]  # noqa: E731
    quantize_module._quantize(tmp_path / "fp32.onnx", tmp_path / "int8.onnx", calibration)
    assert "Pad" not in operators(tmp_path / "int8.onnx") and "QuantizeLinear" in operators(tmp_path / "int8.onnx")

    def broken(*args):
        raise ValueError("an operator the pass does not expect")

    monkeypatch.setattr(quantize_module, "fold_pads", broken)
    quantize_module._quantize(tmp_path / "fp32.onnx", tmp_path / "unfolded.int8.onnx", calibration)
    assert "Pad" in operators(tmp_path / "unfolded.int8.onnx")
