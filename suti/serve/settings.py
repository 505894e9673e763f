"""Limits and defaults of the web server, and where the shipped default model lives."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# The project ships a small trained checkpoint here (a folder with cascade.json) when it has one.
DEFAULT_MODEL_FOLDER = Path(__file__).resolve().parent.parent / "demo" / "assets" / "world_suti"


def default_model_folder() -> Path:
    """The shipped default checkpoint folder, or a clear error when this installation has none."""
    if (DEFAULT_MODEL_FOLDER / "cascade.json").is_file():
        return DEFAULT_MODEL_FOLDER
    raise FileNotFoundError(f"no --model given and this installation ships no default model "
                            f"(no cascade.json in {DEFAULT_MODEL_FOLDER}); pass --model FOLDER, a SuTI "
                            f"checkpoint folder with cascade.json")


@dataclass(frozen=True)
class ServeSettings:
    max_upload_bytes: int = 100 * 1024 * 1024  # one photo; larger uploads are refused before they are read
    max_photos: int = 5                        # the pipeline reads 1-5 exemplars
    max_waiting: int = 8                       # queued requests beyond the running one; more are refused
    max_images: int = 8                        # per request
    max_steps: int = 250                       # per stage
    max_prompt_chars: int = 1000
    max_caption_chars: int = 300
    max_pending_uploads: int = 200             # photos held in the temporary folder at once
    upload_ttl_s: float = 3600.0               # an unused upload is deleted after this long
    keep_finished_jobs: int = 32               # results kept in memory for download
    default_steps: int = 50
    default_guidance: float = 5.0

    def __post_init__(self):
        for name in ("max_upload_bytes", "max_photos", "max_images", "max_steps", "max_prompt_chars",
                     "max_caption_chars", "max_pending_uploads", "keep_finished_jobs", "default_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_waiting < 0:
            raise ValueError(f"max_waiting must be >= 0, got {self.max_waiting}")
        if self.upload_ttl_s <= 0:
            raise ValueError(f"upload_ttl_s must be > 0, got {self.upload_ttl_s}")
