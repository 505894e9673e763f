"""Stage 6: captions. Keep the alt text, or recaption with any image-to-text model (pluggable, loaded lazily).

A captioner is any callable `list[PIL.Image] -> list[str]`. TransformersCaptioner wraps a Hugging Face
image-to-text model given by hub name or local folder (BLIP, GIT, VisionEncoderDecoder, ...).

The trainer refuses empty texts, so no member leaves this stage without one: in `alt` mode an empty alt text is
recaptioned when a captioner is configured (captions.model or captions.factory), and whatever is still empty
gets the cluster's subject phrase (fill_missing_captions, counted as captions.from_subject).
"""
from __future__ import annotations

from .config import CaptionConfig
from .counts import Counts
from .embedding import open_image
from .inputs import load_factory
from .records import Cluster


class TransformersCaptioner:
    """Loads on first call: AutoProcessor (or image processor + tokenizer) and AutoModelForImageTextToText,
    falling back to VisionEncoderDecoderModel. Greedy decoding, so captions are reproducible."""

    def __init__(self, model: str, device: str = "cpu", batch_size: int = 8, max_new_tokens: int = 30,
                 prompt: str | None = None):
        self.model_name, self.device, self.batch_size = model, device, batch_size
        self.max_new_tokens, self.prompt = max_new_tokens, prompt
        self._model = self._processor = self._tokenizer = None

    def _load(self):
        import transformers as tf
        try:
            self._processor = tf.AutoProcessor.from_pretrained(self.model_name)
        except Exception:  # noqa: BLE001 - some checkpoints only carry an image processor + tokenizer
            self._processor = None
        if self._processor is None or isinstance(self._processor, tf.PreTrainedTokenizerBase):
            # VisionEncoderDecoder folders: AutoProcessor finds only the tokenizer
            self._processor = tf.AutoImageProcessor.from_pretrained(self.model_name)
        self._tokenizer = getattr(self._processor, "tokenizer", None)
        if self._tokenizer is None:
            self._tokenizer = tf.AutoTokenizer.from_pretrained(self.model_name)
        errors = []
        for cls_name in ("AutoModelForImageTextToText", "VisionEncoderDecoderModel"):
            cls = getattr(tf, cls_name, None)
            if cls is None:
                continue
            try:
                self._model = cls.from_pretrained(self.model_name).to(self.device).eval()
                break
            except Exception as e:  # noqa: BLE001
                errors.append(f"{cls_name}: {e}")
        if self._model is None:
            raise ValueError(f"cannot load image-to-text model {self.model_name!r}: {'; '.join(errors)}")

    def __call__(self, images) -> list[str]:
        import torch
        if self._model is None:
            self._load()
        out: list[str] = []
        for i in range(0, len(images), self.batch_size):
            batch = images[i:i + self.batch_size]
            if self.prompt is not None:
                inputs = self._processor(images=batch, text=[self.prompt] * len(batch), return_tensors="pt")
            else:
                try:
                    inputs = self._processor(images=batch, return_tensors="pt")
                except TypeError:
                    inputs = self._processor(batch, return_tensors="pt")
            inputs = {k: v.to(self.device) for k, v in inputs.items() if hasattr(v, "to")}
            with torch.no_grad():
                ids = self._model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
            texts = self._tokenizer.batch_decode(ids, skip_special_tokens=True)
            if self.prompt:
                texts = [t[len(self.prompt):] if t.startswith(self.prompt) else t for t in texts]
            out.extend(" ".join(t.split()) for t in texts)
        return out


def load_captioner(cfg: CaptionConfig):
    """A factory callable or a TransformersCaptioner (not loaded until used); None in `alt` mode without one
    configured (in `alt` mode a configured captioner only captions images whose alt text is empty)."""
    if cfg.mode == "alt" and not (cfg.factory or cfg.model):
        return None
    if cfg.factory:
        return load_factory(cfg.factory)(**cfg.kwargs)
    if not cfg.model:
        raise ValueError(f"captions.mode={cfg.mode!r} needs captions.model (HF name or folder) or captions.factory")
    return TransformersCaptioner(cfg.model, device=cfg.device, batch_size=cfg.batch_size,
                                 max_new_tokens=cfg.max_new_tokens, **cfg.kwargs)


def caption_clusters(clusters: list[Cluster], captioner, cfg: CaptionConfig, counts: Counts) -> list[Cluster]:
    """Sets member.caption (possibly "", see fill_missing_captions). Recaptioning decodes images in batches of
    cfg.batch_size."""
    todo = []
    for c in clusters:
        for m in c.members:
            alt = m.record.text.strip()
            if cfg.mode == "recaption" or (cfg.mode == "auto" and len(alt.split()) < cfg.min_alt_words) \
                    or (cfg.mode == "alt" and not alt and captioner is not None):
                todo.append(m)
            else:
                m.caption = alt
                counts.add("captions.alt")
                if not alt:
                    counts.add("captions.empty_alt")
    if todo and captioner is None:
        raise ValueError("captions: recaptioning was asked for but no captioner is configured")
    for i in range(0, len(todo), cfg.batch_size):
        batch = todo[i:i + cfg.batch_size]
        texts = captioner([open_image(m.record.image, draft_side=None) for m in batch])
        if len(texts) != len(batch):
            raise ValueError(f"captioner returned {len(texts)} captions for {len(batch)} images")
        for m, t in zip(batch, texts):
            m.caption = " ".join(str(t).split())
            counts.add("captions.recaptioned")
    return clusters


def fill_missing_captions(cluster: Cluster, subject: str, counts: Counts) -> None:
    """Members still without a caption (no alt text, no captioner, or an empty generated one) get `subject`."""
    for m in cluster.members:
        if not (m.caption or "").strip():
            m.caption = subject
            counts.add("captions.from_subject")
