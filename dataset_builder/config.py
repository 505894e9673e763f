"""Builder configuration: dataclasses per stage, loaded from YAML or JSON with unknown keys rejected by name."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from suti.config_loading import build_dataclass, read_config_file


class ConfigError(ValueError):
    """A config file or key that the builder cannot use; the message names the file and key."""


@dataclass
class DecodeConfig:
    max_pixels: int = 40_000_000      # refuse before decoding (decompression bombs)
    min_side: int = 64                # shorter side, after EXIF rotation
    max_aspect: float = 3.0           # long side / short side
    max_side: int = 1024              # larger images are downscaled (LANCZOS) before storage
    jpeg_quality: int = 95
    max_file_bytes: int = 64 << 20    # an image (file, tar member or manifest bytes) larger than this is dropped
    # A manifest's image_path can name any file this process can read. Set path_root to confine them to one
    # folder (symlinks resolved); paths outside it are dropped (decode.dropped.outside_path_root).
    path_root: str | None = None


@dataclass
class GroupConfig:
    min_cluster_size: int | None = None   # default: K + 1
    max_cluster_size: int = 64            # pages with more images are galleries/catalogues, not one subject
    max_page_records: int | None = None   # pages with more records are dropped unread; None: 2 x max_cluster_size
    boilerplate_min_pages: int = 5        # an image on this many distinct pages is a logo/icon/banner
    merge_http_https: bool = True
    strip_www: bool = True


@dataclass
class CoherenceConfig:
    min_member_similarity: float = 0.6    # cosine to the cluster centroid
    min_mean_similarity: float = 0.7      # mean pairwise cosine of the kept members
    min_image_text_score: float | None = None  # CLIP image-alt text cosine; None = off (alt text is often absent)


@dataclass
class DedupeConfig:
    threshold: float = 0.95               # cosine at or above which two images are near-duplicates
    cross_corpus: bool = True
    cell_size: int = 20_000               # records per coarse cell in the corpus-wide pass (memory bound)
    second_cell_margin: float = 0.05      # also search the second-nearest cell when this close (boundary recall)
    sample_size: int = 50_000             # embeddings used to place the coarse cells


@dataclass
class CaptionConfig:
    mode: str = "alt"                     # alt | recaption | auto (recaption when the alt text is short)
    min_alt_words: int = 3                # for auto
    model: str | None = None              # HF name or folder of an image-to-text model (alt mode: empty alt only)
    factory: str | None = None            # "module:function" returning a callable list[PIL] -> list[str]
    kwargs: dict = field(default_factory=dict)
    device: str = "cpu"
    batch_size: int = 8
    max_new_tokens: int = 30


@dataclass
class PromptConfig:
    generator: str = "templates"          # templates | text-generation | factory
    per_cluster: int = 8
    skills: list[str] = field(default_factory=lambda: [
        "recontextualization", "stylization", "property_change", "accessorization", "new_view"])
    model: str | None = None              # for text-generation: HF name or folder
    factory: str | None = None
    kwargs: dict = field(default_factory=dict)
    device: str = "cpu"
    max_new_tokens: int = 48


@dataclass
class ExpertConfig:
    type: str = "held_out"                # held_out | dreambooth | factory
    factory: str | None = None
    kwargs: dict = field(default_factory=dict)   # passed to the expert's constructor
    min_clip_t: float = 0.2               # target image vs its prompt
    min_clip_i: float = 0.7               # target image vs the mean exemplar embedding


@dataclass
class EmbedderConfig:
    model: str | None = None              # open_clip name ("ViT-B-32") or "local-dir:/path"
    pretrained: str | None = None
    factory: str | None = None            # "module:function" returning an Embedder-like object
    kwargs: dict = field(default_factory=dict)
    device: str = "cpu"
    batch_size: int = 64


@dataclass
class ReportConfig:
    contact_sheet_clusters: int = 40
    contact_sheet_rejected: int = 20
    thumb_size: int = 96


@dataclass
class BuilderConfig:
    inputs: list[dict] = field(default_factory=list)
    output_dir: str = "icl_dataset"
    k: int = 3                            # exemplars per training example
    records_per_partition: int = 10_000   # the memory bound: records held at once by the local backend
    run_size: int = 10_000                # records buffered before an ingest run is written
    seed: int = 0
    keep_intermediate: bool = False
    backend: str = "local"
    progress: bool = True
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    group: GroupConfig = field(default_factory=GroupConfig)
    embedder: EmbedderConfig = field(default_factory=EmbedderConfig)
    coherence: CoherenceConfig = field(default_factory=CoherenceConfig)
    dedupe: DedupeConfig = field(default_factory=DedupeConfig)
    captions: CaptionConfig = field(default_factory=CaptionConfig)
    prompts: PromptConfig = field(default_factory=PromptConfig)
    expert: ExpertConfig = field(default_factory=ExpertConfig)
    report: ReportConfig = field(default_factory=ReportConfig)

    @property
    def max_page_records(self) -> int:
        g = self.group
        return g.max_page_records if g.max_page_records is not None else 2 * g.max_cluster_size

    @property
    def min_cluster_size(self) -> int:
        return self.group.min_cluster_size if self.group.min_cluster_size is not None else self.k + 1

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        """Hash of everything that changes the output (not backend, progress or keep_intermediate)."""
        d = self.to_dict()
        for k in ("backend", "progress", "keep_intermediate", "output_dir"):
            d.pop(k)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def config_from_dict(data: dict, where: str = "config") -> BuilderConfig:
    try:
        cfg = build_dataclass(BuilderConfig, data, "", error=ConfigError)
    except ConfigError as e:
        raise ConfigError(f"{where}: {str(e).lstrip(': ')}") from None
    if cfg.k < 1:
        raise ConfigError(f"{where}.k must be >= 1, got {cfg.k}")
    if cfg.min_cluster_size < cfg.k + 1:
        raise ConfigError(f"{where}.group.min_cluster_size must be >= k+1 = {cfg.k + 1}")
    if cfg.max_page_records < cfg.group.max_cluster_size:
        raise ConfigError(f"{where}.group.max_page_records must be >= max_cluster_size = {cfg.group.max_cluster_size}")
    if cfg.records_per_partition < 1 or cfg.run_size < 1:
        raise ConfigError(f"{where}: records_per_partition and run_size must be >= 1")
    if cfg.captions.mode not in ("alt", "recaption", "auto"):
        raise ConfigError(f"{where}.captions.mode must be alt, recaption or auto, got {cfg.captions.mode!r}")
    if cfg.backend not in ("local", "ray"):
        raise ConfigError(f"{where}.backend must be local or ray, got {cfg.backend!r}")
    if not isinstance(cfg.inputs, list):
        raise ConfigError(f"{where}.inputs must be a list of input specs")
    if not isinstance(cfg.decode.max_file_bytes, int) or cfg.decode.max_file_bytes < 1:
        raise ConfigError(f"{where}.decode.max_file_bytes must be a positive integer, got "
                          f"{cfg.decode.max_file_bytes!r}")
    if cfg.decode.path_root is not None and not os.path.isdir(cfg.decode.path_root):
        raise ConfigError(f"{where}.decode.path_root {cfg.decode.path_root!r} is not a folder")
    return cfg


def load_config(path: str | Path) -> BuilderConfig:
    """Read a YAML (.yaml/.yml) or JSON config. Relative paths in it resolve against the config file's folder
    (see resolve_paths), so a config means the same files from any working directory."""
    path = Path(path)
    data = read_config_file(path, "config", error=ConfigError)
    return config_from_dict(resolve_paths(data, path.resolve().parent), where=str(path))


LOCAL_DIR = "local-dir:"


def resolve_paths(data: dict, base: Path) -> dict:
    """Makes the path-like values of a config dict absolute against `base` (in place; returns it).

    Always paths: inputs[].path / paths / image_root, output_dir, decode.path_root, embedder.model after
    "local-dir:", and expert.kwargs.pipeline of a dreambooth expert. Hub name or path (embedder.pretrained,
    captions.model, prompts.model): resolved only when that file or folder exists under `base`, else left as a name.
    """
    for spec in data.get("inputs") or []:
        if isinstance(spec, dict):
            for key in ("path", "paths", "image_root"):
                if spec.get(key) is not None:
                    spec[key] = _resolve(spec[key], base)
    if data.get("output_dir") is not None:
        data["output_dir"] = _resolve(data["output_dir"], base)
    if isinstance(data.get("decode"), dict) and data["decode"].get("path_root") is not None:
        data["decode"]["path_root"] = _resolve(data["decode"]["path_root"], base)
    emb = data.get("embedder")
    if isinstance(emb, dict):
        model = emb.get("model")
        if isinstance(model, str) and model.startswith(LOCAL_DIR):
            emb["model"] = LOCAL_DIR + _resolve(model[len(LOCAL_DIR):], base)
        _resolve_if_exists(emb, "pretrained", base)
    for section in ("captions", "prompts"):
        if isinstance(data.get(section), dict):
            _resolve_if_exists(data[section], "model", base)
    expert = data.get("expert")
    if isinstance(expert, dict) and expert.get("type") == "dreambooth" and isinstance(expert.get("kwargs"), dict):
        if isinstance(expert["kwargs"].get("pipeline"), str):
            expert["kwargs"]["pipeline"] = _resolve(expert["kwargs"]["pipeline"], base)
    return data


def _resolve(value, base: Path):
    if isinstance(value, list):
        return [_resolve(v, base) for v in value]
    p = Path(str(value)).expanduser()
    # normpath, not resolve(): no symlink surprises, and configs/../data equals data (same fingerprint)
    return os.path.normpath(str(p if p.is_absolute() else base / p))


def _resolve_if_exists(section: dict, key: str, base: Path) -> None:
    value = section.get(key)
    if isinstance(value, str) and value and not Path(value).expanduser().is_absolute() \
            and (base / Path(value).expanduser()).exists():
        section[key] = _resolve(value, base)
