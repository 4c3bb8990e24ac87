"""``fedrec config --explain``: every key with its value, default, choices and help."""

from __future__ import annotations

import tomli_w

from .run_config import FedRecConfig


def explain(cfg: FedRecConfig) -> str:
    """A TOML document of ``cfg``'s keys, grouped by section, each preceded by its help,
    its default and its choices as comments (it parses back to ``cfg.to_run_config()``).
    """
    lines: list[str] = []
    for name, section in FedRecConfig.sections().items():
        lines += ["", f"# ---- [{section.title}] {section.__doc__.strip().replace('``', '')}"]
        values = getattr(cfg, name).values()
        for key, f in section.keys().items():
            notes = [f"default {tomli_w.dumps({'v': f.default})[4:].strip()}"]
            if f.metadata["choices"]:
                notes.append("one of " + ", ".join(f.metadata["choices"]))
            elif f.metadata["check"]:
                notes.append(f"{f.metadata['check']}")
            lines.append(f"# {f.metadata['help']} ({'; '.join(notes)})")
            lines.append(tomli_w.dumps({key: values[key]}).strip())
    return "\n".join(lines).lstrip("\n") + "\n"
