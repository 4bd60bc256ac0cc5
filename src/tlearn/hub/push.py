"""`tlearn push RUN --repo-id USER/NAME`: a finished run folder as a Hub folder, uploaded.

The folder is timm's (config.json, model.safetensors: `timm.create_model("hf-hub:USER/NAME",
pretrained=True)` loads it), plus tlearn's own files (model.json: the sidecar with the class
names, preprocessing, temperature and thresholds; calibration.json; summary.json, which the
card's figures come from), the ONNX graph when the run was exported, and the model card.
`--local-dir DIR` writes the folder and uploads nothing; otherwise huggingface_hub uploads it
with the token from the usual environment (HF_TOKEN, or `hf auth login`).
"""
from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

from ..errors import RunFolderError, UserError, first_line
from ..run_folder import checkpoint
from ._audit import read_audit
from ._card import model_card, read_run
from ._timm_format import require_timm_layout, write_timm_files
from .download import TIMM_CONFIG
from .names import check_repo_id

logger = logging.getLogger(__name__)

SIDECAR_FILES = ("model.json", "calibration.json", "summary.json")
ONNX_FILES = ("model.onnx", "model.onnx.json")  # from the run's export/ folder
CARD_FILE = "README.md"
HUB_FILES = frozenset({TIMM_CONFIG, checkpoint.MODEL_FILE, *SIDECAR_FILES, *ONNX_FILES, CARD_FILE})


class PushError(UserError):
    """The Hub refused the upload, or could not be reached."""


def _require_finished(run_dir: Path) -> None:
    if not run_dir.is_dir():
        raise RunFolderError(f"run folder not found: {run_dir}")
    for name in ("summary.json", checkpoint.MODEL_JSON, checkpoint.MODEL_FILE, "config.yaml"):
        if not (run_dir / name).is_file():
            raise RunFolderError(f"{run_dir} is not a finished tlearn run (no {name}): push a run that finished")


def _require_writable(folder: Path) -> None:
    """A new or empty folder, or one an earlier push wrote (its files are replaced)."""
    if not folder.is_dir():
        return
    theirs = sorted(entry.name for entry in folder.iterdir() if entry.name not in HUB_FILES
                    and not entry.name.startswith("."))
    if theirs:
        raise UserError(f"--local-dir {folder} holds files that are not a pushed model's ({', '.join(theirs[:3])}): "
                        "choose a new or empty folder")


def write_hub_folder(run_dir: str | Path, folder: str | Path, repo_id: str,
                     audit_dir: str | Path | None = None) -> Path:
    """The Hub folder of the run `run_dir` in `folder`; returns `folder`. `audit_dir`: a `tlearn audit`
    folder of the run's data, whose findings the card shows."""
    run_dir, folder = Path(run_dir), Path(folder)
    check_repo_id(repo_id)
    _require_finished(run_dir)
    info = checkpoint.read_model_info(run_dir)
    require_timm_layout(info)
    findings = None
    if audit_dir is not None:
        findings = read_audit(audit_dir, str(read_run(run_dir)["config"]["data"]["source"]), list(info.class_names))
    _require_writable(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_timm_files(folder, info, checkpoint.read_tensors(run_dir / checkpoint.MODEL_FILE))
    for name in SIDECAR_FILES:
        if (run_dir / name).is_file():
            shutil.copyfile(run_dir / name, folder / name)
    exported = all((run_dir / "export" / name).is_file() for name in ONNX_FILES)
    for name in ONNX_FILES if exported else ():
        shutil.copyfile(run_dir / "export" / name, folder / name)
    (folder / CARD_FILE).write_text(model_card(run_dir, repo_id, has_onnx=exported, audit=findings), encoding="utf-8")
    return folder


def push_run(run_dir: str | Path, repo_id: str, *, private: bool = False, local_dir: str | Path | None = None,
             audit_dir: str | Path | None = None) -> str:
    """Write the run's Hub folder; upload it unless `local_dir` is given. Returns where it went: the
    folder, or the repository's URL."""
    check_repo_id(repo_id)
    if local_dir is not None:
        return str(write_hub_folder(run_dir, local_dir, repo_id, audit_dir))
    with tempfile.TemporaryDirectory(prefix="tlearn-push-") as scratch:
        folder = write_hub_folder(run_dir, Path(scratch) / "model", repo_id, audit_dir)
        return _upload(folder, repo_id, private)


def _upload(folder: Path, repo_id: str, private: bool) -> str:
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(library_name="tlearn")
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                          commit_message="tlearn push: model, sidecar and model card")
    except (HfHubHTTPError, OSError, ValueError) as error:  # no token, no network, no right to the namespace
        raise PushError(f"cannot push to {repo_id} on the Hugging Face Hub ({first_line(error, 110)})") from None
    logger.info(f"pushed {folder} to {url}")
    return str(url)
