"""The Hugging Face Hub: a run folder as a Hub folder in timm's format with a model card
(`tlearn push`), and a pushed model back (`tlearn.load("hf-hub:USER/NAME")`).

Other packages import these names from here, the package's front door; modules whose
names start with _ are its own."""
from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {
    "download_model": "download", "load_hub_model": "download",
    "HUB_PREFIX": "names", "RepoIdError": "names", "check_repo_id": "names", "is_hub_name": "names",
    "push_run": "push", "write_hub_folder": "push",
    "model_card": "_card",
}
__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS)
