"""Per-subject fine-tuning baselines on the same cascade: DreamBooth and Textual Inversion.

They are the paper's comparison and the dataset builder's apprenticeship experts.
"""
from .dreambooth import DreamBoothConfig, DreamBoothResult, dreambooth, load_dreambooth
from .textual_inversion import (TextualInversionConfig, TextualInversionResult, load_token_embeddings,
                                save_token_embeddings, textual_inversion)

__all__ = ["DreamBoothConfig", "DreamBoothResult", "dreambooth", "load_dreambooth", "TextualInversionConfig",
           "TextualInversionResult", "textual_inversion", "save_token_embeddings", "load_token_embeddings"]
