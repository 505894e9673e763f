"""DreamBoothExpert against the real suti.personalize.dreambooth on a tiny cascade."""
import torch

from dataset_builder.counts import Counts
from dataset_builder.experts import DreamBoothExpert, filter_targets
from dataset_builder.config import ExpertConfig
from dataset_builder.records import Cluster, Member, Prompt, Record, hash64
from dataset_builder.testing import PlantedEmbedder, jpeg_bytes, subject_image


def _cluster(word="zorb", n=5):
    page = f"https://e.com/{word}"
    members = []
    for v in range(n):
        img = jpeg_bytes(subject_image(word, v))
        r = Record(key=f"{word}{v}", source="t", page_url=page, page_key=page, page_hash=hash64(page), image_url=str(v),
                   text=f"{word} teapot {v}", image=img, width=96, height=96, content_hash=hash64(img))
        m = Member(r)
        m.caption = r.text
        members.append(m)
    return Cluster(page_hash=hash64(page), page_key=page, members=members)


def test_dreambooth_expert_renders_with_real_dreambooth(tiny_text_encoder):
    from suti.pipeline import new_pipeline
    from suti.presets import preset

    enc = tiny_text_encoder
    torch.manual_seed(0)
    pipe = new_pipeline(enc, [preset("tiny-base32", text_embed_dim=enc.dim, stage_name="base")])
    torch.nn.init.normal_(pipe.cascade.stages[0].unet.out[-1].weight, std=0.05)
    before = {k: v.clone() for k, v in pipe.cascade.state_dict().items()}
    expert = DreamBoothExpert(pipe, dreambooth={"steps": 3, "lr": 1e-4, "batch_size": 2, "num_prior_images": 2,
                                                "prior_sampling_steps": 1}, num_images=2, steps=2,
                              sample_kwargs={"stop_at": 0})
    prompts = [Prompt("{subject} on a beach", "recontextualization", "a zorb teapot"),
               Prompt("a watercolor painting of {subject}", "stylization", "a zorb teapot")]
    targets = expert.render(_cluster(), [0, 1, 2], prompts)
    assert len(targets) == 4
    assert all(t.image.size == (32, 32) and t.expert == "dreambooth" for t in targets)
    assert targets[0].prompt == "a zorb teapot on a beach"
    # the shared base pipeline is untouched: the expert fine-tuned a copy
    assert all(torch.equal(before[k], v) for k, v in pipe.cascade.state_dict().items())
    counts = Counts()
    kept = filter_targets(targets, PlantedEmbedder().embed_images([subject_image("zorb", 0)]), PlantedEmbedder(),
                          ExpertConfig(min_clip_t=-1.0, min_clip_i=-1.0), 8, counts)
    assert len(kept) == 4 and all(t.clip_t is not None and t.clip_i is not None for t in kept)
