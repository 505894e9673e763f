"""dataset_builder: web (page, image, text) pairs -> in-context (ICL) training shards for SuTI.

Stages are pure functions over batches of records (decode, grouping, embedding, coherence, dedupe, captions,
prompts, experts, samples, writer); `local` and `ray_backend` compose them. Start at build_dataset().
"""
from .build import build_dataset
from .captions import TransformersCaptioner
from .components import Components
from .config import BuilderConfig, ConfigError, config_from_dict, load_config
from .experts import DreamBoothExpert, Expert, HeldOutExpert
from .prompts import SKILL_TEMPLATES, TemplatePromptGenerator, TextGenerationPromptGenerator
from .records import Cluster, ICLSample, Member, Prompt, RawRecord, Record, Target
from .urls import normalize_page_url
from .writer import read_icl_shard, write_icl_shard

__all__ = [
    "build_dataset", "BuilderConfig", "ConfigError", "config_from_dict", "load_config", "Components",
    "Expert", "HeldOutExpert", "DreamBoothExpert", "TransformersCaptioner", "TemplatePromptGenerator",
    "TextGenerationPromptGenerator", "SKILL_TEMPLATES", "normalize_page_url", "read_icl_shard", "write_icl_shard",
    "RawRecord", "Record", "Member", "Cluster", "Prompt", "Target", "ICLSample",
]
