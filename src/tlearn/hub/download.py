"""A model pushed with `tlearn push`, back from the Hub: `hf-hub:USER/NAME` is downloaded by
huggingface_hub (into its own cache: a second load needs no network) and rebuilt from the
tlearn sidecar (model.json) and timm's model.safetensors.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..errors import RunFolderError, WeightsDownloadError, first_line
from ..files import read_json
from ..models import Classifier
from ..run_folder import checkpoint
from ._timm_format import from_timm_state
from .names import HUB_PREFIX, check_repo_id, is_hub_name

TIMM_CONFIG = "config.json"


def download_model(name: str) -> Path:
    """The local folder of `hf-hub:USER/NAME` (downloaded once, then from huggingface_hub's cache)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    repo_id = check_repo_id(name[len(HUB_PREFIX):] if is_hub_name(name) else name)
    try:
        return Path(snapshot_download(repo_id, library_name="tlearn"))
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError, ValueError) as error:
        raise WeightsDownloadError(f"cannot download {repo_id} from the Hugging Face Hub ({first_line(error, 100)})")\
            from None


def load_hub_model(folder: str | Path) -> Classifier:
    """The classifier in a Hub folder that `tlearn push` wrote, in eval mode."""
    from safetensors.torch import load_file

    folder = Path(folder)
    for name in (checkpoint.MODEL_JSON, TIMM_CONFIG, checkpoint.MODEL_FILE):
        if not (folder / name).is_file():
            raise RunFolderError(f"{folder} is not a model pushed by tlearn (no {name})")
    model = checkpoint.build_model(checkpoint.read_model_info(folder))
    classifier = read_json(folder / TIMM_CONFIG)["pretrained_cfg"]["classifier"]
    state = from_timm_state(load_file(str(folder / checkpoint.MODEL_FILE), device="cpu"), classifier)
    checkpoint.load_weights(model, state, folder / checkpoint.MODEL_FILE)
    return model.eval().to(torch.float32)
