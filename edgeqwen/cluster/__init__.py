"""edgeqwen past one machine: batch classification (Ray Data) and the server (Ray Serve) on a Ray cluster; the only code
that imports Ray.

Needs the extra: pip install 'edgeqwen[ray]'. Everything else in edgeqwen runs without it. The names
below are imported on first use, so a batch job never loads Ray Serve. See docs/ray.md.

    >>> from edgeqwen.cluster import RayOptions, classify_dataset, classify_file_on_ray
    >>> classify_file_on_ray(Path("reviews.jsonl"), Path("labels.jsonl"), RayOptions(threads=2))
"""

from __future__ import annotations

from ..lazy import lazy_names

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


__getattr__ = lazy_names(__name__, _EXPORTS)
