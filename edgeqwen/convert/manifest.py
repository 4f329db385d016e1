"""The manifest written beside a built model: where it came from, what it is, how it was verified."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

MANIFEST_SUFFIX = ".manifest.json"


def manifest_path(model_path: Path) -> Path:
    model_path = Path(model_path)
    return model_path.with_name(model_path.name + MANIFEST_SUFFIX)


def write_manifest(model_path: Path, manifest: dict[str, Any]) -> Path:
    """Write (atomically) the manifest of model_path; returns its path."""
    path = manifest_path(model_path)
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(json.dumps(manifest, ensure_ascii=False, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_manifest(model_path: Path) -> dict[str, Any] | None:
    """The manifest beside model_path, or None if there is none or it is unreadable."""
    try:
        data = json.loads(manifest_path(model_path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def update_manifest(model_path: Path, **sections: Any) -> dict[str, Any] | None:
    """Add or replace top-level sections of an existing manifest."""
    manifest = read_manifest(model_path)
    if manifest is None:
        return None
    manifest.update(sections)
    write_manifest(model_path, manifest)
    return manifest


def summary_lines(manifest: dict[str, Any]) -> list[str]:
    """The manifest as `key value` lines for `edgeqwen info` (nested sections flattened with dots)."""
    lines: list[str] = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), item)
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for i, item in enumerate(value):
                walk(f"{prefix}[{i}]", item)
        else:
            lines.append(f"{prefix:<34} {value}")

    walk("", manifest)
    return lines
