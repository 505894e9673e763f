"""Entry point: build_dataset(config) with the local or the Ray backend."""
from __future__ import annotations

from pathlib import Path

from .components import Components
from .config import BuilderConfig, load_config


def build_dataset(config: BuilderConfig | str | Path, backend: str | None = None, overwrite: bool = False,
                  components: Components | None = None) -> dict:
    """Builds (or resumes) the ICL dataset described by `config`; returns the stats written to stats.json.

    backend: "local" (default, streaming, one process) or "ray"; None takes config.backend.
    components: ready-made embedder/captioner/prompt generator/expert (local backend only).
    """
    cfg = config if isinstance(config, BuilderConfig) else load_config(config)
    backend = backend or cfg.backend
    if backend == "local":
        from .local import build_local
        return build_local(cfg, components=components, overwrite=overwrite)
    if backend == "ray":
        if components is not None:
            raise ValueError("the ray backend builds its components from the config in each worker; "
                         "use factory specs in the config instead of passing objects")
        from .ray_backend import build_ray
        return build_ray(cfg, overwrite=overwrite)
    raise ValueError(f"backend must be 'local' or 'ray', got {backend!r}")
