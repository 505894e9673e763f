"""TransformersCaptioner loads a real (tiny, random) VisionEncoderDecoder from a local folder and captions."""
import pytest

from dataset_builder.captions import TransformersCaptioner, caption_clusters
from dataset_builder.config import CaptionConfig
from dataset_builder.counts import Counts
from dataset_builder.records import Cluster, Member, Record, hash64
from dataset_builder.testing import jpeg_bytes, subject_image


@pytest.fixture(scope="module")
def tiny_captioner_folder(tmp_path_factory):
    tf = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    folder = tmp_path_factory.mktemp("tiny_captioner")
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(["a photo of a zorb teapot on a table", "a red backpack", "the blue vase"] * 10,
                            trainers.BpeTrainer(vocab_size=60, special_tokens=["<pad>", "<s>", "</s>", "<unk>"]))
    fast = tf.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                      unk_token="<unk>")
    enc = tf.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=64)
    dec = tf.GPT2Config(vocab_size=len(fast), n_positions=32, n_embd=32, n_layer=1, n_head=2, bos_token_id=1,
                        eos_token_id=2, pad_token_id=0)
    cfg = tf.VisionEncoderDecoderConfig.from_encoder_decoder_configs(enc, dec)
    cfg.decoder_start_token_id, cfg.pad_token_id, cfg.eos_token_id = 1, 0, 2
    model = tf.VisionEncoderDecoderModel(cfg)
    gc = model.generation_config
    gc.decoder_start_token_id, gc.pad_token_id, gc.eos_token_id = 1, 0, 2
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    tf.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def test_transformers_captioner_from_folder(tiny_captioner_folder):
    cap = TransformersCaptioner(str(tiny_captioner_folder), max_new_tokens=4, batch_size=2)
    images = [subject_image("zorb", v) for v in range(3)]
    out = cap(images)
    assert len(out) == 3 and all(isinstance(t, str) for t in out)
    assert cap(images) == out  # greedy decoding: reproducible
    page = "https://e.com/p"
    c = Cluster(hash64(page), page, [Member(Record(f"k{v}", "t", page, page, hash64(page), f"u{v}", "alt text here",
                                                   jpeg_bytes(im), 96, 96, v)) for v, im in enumerate(images)])
    counts = Counts()
    caption_clusters([c], cap, CaptionConfig(mode="recaption", batch_size=2), counts)
    assert counts["captions.recaptioned"] == 3 and [m.caption for m in c.members] == out


def test_missing_model_folder_fails_with_its_name(tmp_path):
    cap = TransformersCaptioner(str(tmp_path / "nope"))
    with pytest.raises(Exception, match="nope"):
        cap([subject_image("zorb", 0)])
