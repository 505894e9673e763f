"""``suti serve``: a local web page to personalise a SuTI checkpoint from your own photos.

Install the optional extra first: ``pip install "suti[web]"`` (FastAPI + uvicorn). The modules here that
need it (``app``) import it themselves, so ``import suti.serve`` and the core CLI work without it.

    from suti.serve import ServeSettings
    from suti.serve.app import create_app
    app = create_app(SuTIPipeline.from_pretrained("ckpt"), ServeSettings())   # an ASGI app for uvicorn
"""
from .settings import DEFAULT_MODEL_FOLDER, ServeSettings, default_model_folder

__all__ = ["ServeSettings", "DEFAULT_MODEL_FOLDER", "default_model_folder"]
