"""Score images with the world's judges: identity (DINO's role) against a subject's exemplars, and the
attributes a prompt asks for (CLIP-T's role). Here the "generated" images are the ground truth and a
wrong subject, to show what the scores look like.

    python examples/world_judges.py
"""
from suti.demo.heldout import heldout_subject
from suti.demo.judge_weights import load_world_judge, shipped_judge_metrics
from suti.demo.judges import attribute_accuracy, identity_scores

judge = load_world_judge()  # the shipped judge (suti/demo/assets/judge)
print("validation recorded at training:", {k: v["identity_top1"] for k, v in
                                           shipped_judge_metrics().get("validation", {}).items()})
subject, other = heldout_subject(0), heldout_subject(1)
targets = subject.target_images(64)
labels = [p.labels for p in subject.prompts]
print("identity, right subject:", identity_scores(judge, targets, subject.exemplar_images(64)).mean().round(3))
print("identity, wrong subject:", identity_scores(judge, other.target_images(64), subject.exemplar_images(64))
      .mean().round(3))
print("attributes the prompts ask for:", attribute_accuracy(judge, targets, labels))
