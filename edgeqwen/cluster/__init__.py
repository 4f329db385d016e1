"""edgeqwen past one machine: batch classification (Ray Data) and the server (Ray Serve) on a Ray cluster; the only code that imports Ray.

Needs the extra: pip install 'edgeqwen[ray]'. Everything else in edgeqwen runs without it. The names
below are imported on first use, so a batch job never loads Ray Serve. See docs/ray.md.

    >>> from edgeqwen.cluster import RayOptions, classify_dataset, classify_file_on_ray
    >>> classify_file_on_ray(Path("reviews.jsonl"), Path("labels.jsonl"), RayOptions(threads=2))
"""

from __future__ import annotations

# public name -> the submodule that defines it
_EXPORTS = {
    "ClusterError": "nodes",
    "RayOptions": "nodes",
    "classify_dataset": "batch",
    "classify_file_on_ray": "batch",
    "build_app": "serving",
    "serve_on_ray": "serving",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
