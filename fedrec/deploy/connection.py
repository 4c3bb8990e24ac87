"""The ``flwr`` CLI's connection to a SuperLink: ``[superlink.<name>]`` in
``$FLWR_HOME/config.toml``.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import tomli_w

from ..files import write_atomic
from . import DeployError
from .commands import resolved_file


def write_connection(name: str, superlink: str, root_certificate: str | Path | None) -> Path:
    """Add (or replace) ``[superlink.<name>]`` in ``$FLWR_HOME/config.toml`` so that
    ``flwr run . <name>`` submits to ``superlink`` over TLS verified with
    ``root_certificate``, or insecurely when it is None. Returns the file's path.
    """
    from flwr.cli.constant import DEFAULT_FLOWER_CONFIG_TOML, FLOWER_CONFIG_FILE
    from flwr.supercore.utils import get_flwr_home

    path = get_flwr_home() / FLOWER_CONFIG_FILE
    try:
        # flwr writes its default file when there is none
        config = tomllib.loads(path.read_text() if path.exists() else DEFAULT_FLOWER_CONFIG_TOML)
    except tomllib.TOMLDecodeError as err:
        raise DeployError(f"{path} is not valid TOML: {err}") from None
    entry: dict[str, str | bool] = {"address": superlink}
    if root_certificate is None:
        entry["insecure"] = True
    else:
        entry["root-certificates"] = resolved_file(Path(root_certificate))
    config.setdefault("superlink", {})[name] = entry
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, tomli_w.dumps(config))
    return path
