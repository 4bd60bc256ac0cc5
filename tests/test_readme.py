"""The README's Python API example runs as written, with the bundled model (issue 20)."""
import logging
import re
from pathlib import Path

from conftest import ROOT, make_folder


def _python_block(after_heading: str) -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index(after_heading):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_python_api_example_runs_as_written(tmp_path, monkeypatch, capsys):
    code = _python_block("## Python API")
    monkeypatch.chdir(tmp_path)
    folder = make_folder(Path("photos"), per_class=6)
    for path in folder.rglob("*.png"):  # the example names photos/cat/0.jpg
        from PIL import Image

        Image.open(path).save(path.with_suffix(".jpg"))
        path.unlink()
    # only what the example prints: an earlier in-process `tlearn` command may have left its log handler
    monkeypatch.setattr(logging.getLogger("tlearn"), "handlers", [])
    exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert 0.0 <= float(printed[0]) <= 1.0  # summary["val_top1"]
    assert "'label':" in printed[1] and "'probs':" in printed[1]
    assert 0.0 <= float(printed[-1]) <= 1.0
    assert (tmp_path / "runs" / "photos" / "model.safetensors").is_file()
