"""Hub names, checked without PyTorch (the command line's cheap checks use them): `hf-hub:USER/NAME`
and repository ids."""
from __future__ import annotations

from ..errors import UserError, first_line

HUB_PREFIX = "hf-hub:"


class RepoIdError(UserError):
    """A Hub repository id that is not USER/NAME."""


def is_hub_name(name: object) -> bool:
    return isinstance(name, str) and name.startswith(HUB_PREFIX)


def check_repo_id(repo_id: str) -> str:
    """`repo_id` when it is a valid Hub model id (USER/NAME), else one line."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise RepoIdError(f"Hub repository id {repo_id!r} is not valid ({first_line(error, 90)})") from None
    if repo_id.count("/") != 1:
        raise RepoIdError(f"Hub repository id {repo_id!r} is not USER/NAME (a namespace, a slash, the model's name)")
    return repo_id
