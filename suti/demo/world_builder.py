"""The world's parts for the dataset builder: new-context prompts in the world's vocabulary, and an expert
that renders each cluster's subject in them.

The world's renderer is the bulk expert: it reads the crawl's ground truth to find which subject a
cluster's images show, and draws that subject in the context each prompt says. On real pages the same
slot holds a DreamBooth expert (dataset_builder.experts.DreamBoothExpert); `WorldExpert` can hand the
first few clusters to one, so both paths run on one crawl and their keep rates can be compared.

    prompts: {generator: factory, factory: "suti.demo.world_builder:WorldPrompts", kwargs: {seed: 0}}
    expert:  {type: factory, factory: "suti.demo.world_builder:WorldExpert", kwargs: {crawl: DIR, size: 64}}
"""
from __future__ import annotations

import random
from collections import Counter

from dataset_builder.records import Cluster, Prompt, Target, hash64

from .crawl import read_ground_truth, subject_of_urls
from .heldout import random_target_context
from .world import prompt_for, render_prompt


class WorldPrompts:
    """`n` prompts per cluster in DreamBench's skill mix, said in words the world can draw ("a {subject} on
    the beach", "a pencil sketch of a {subject}"); seeded by the cluster id, so reruns write the same ones."""

    def __init__(self, seed: int = 0):
        self.seed = seed

    def __call__(self, cluster_id: str, subject: str, n: int) -> list[Prompt]:
        rng = random.Random(hash64(f"{self.seed}:{cluster_id}"))
        out = []
        for _ in range(n):
            context, skill = random_target_context(rng)
            out.append(Prompt(template=prompt_for("{subject}", context), skill=skill, subject=subject))
        return out


class WorldExpert:
    """Renders the subject most of a cluster's image URLs show in each prompt's context.

    crawl: the crawl folder (its ground_truth.json); size: target side in pixels.
    dreambooth: optional keyword arguments of DreamBoothExpert; with them the first `dreambooth_clusters`
    clusters go to a DreamBooth expert instead (a base stage fine-tuned on the cluster's photos).
    `rendered` counts targets per expert and `no_subject` the clusters whose images show no subject.
    """

    name = "world"

    def __init__(self, crawl: str, size: int = 64, seed: int = 0, dreambooth: dict | None = None,
                 dreambooth_clusters: int = 0):
        self.truth = read_ground_truth(crawl)
        self.size, self.seed = size, seed
        self.dreambooth = None
        if dreambooth and dreambooth_clusters > 0:
            from dataset_builder.experts import DreamBoothExpert

            self.dreambooth = DreamBoothExpert(**{"seed": seed, **dreambooth})
        self.dreambooth_clusters = dreambooth_clusters
        self.rendered, self.no_subject, self._dreambooth_ids = Counter(), 0, set()

    def render(self, cluster: Cluster, exemplars: list[int], prompts: list[Prompt]) -> list[Target]:
        if self.dreambooth is not None and len(self._dreambooth_ids) < self.dreambooth_clusters:
            self._dreambooth_ids.add(cluster.cluster_id)  # the first clusters seen go to DreamBooth
        if cluster.cluster_id in self._dreambooth_ids:
            targets = self.dreambooth.render(cluster, exemplars, prompts)
            self.rendered[self.dreambooth.name] += len(targets)
            return targets
        subject = subject_of_urls(self.truth, [m.record.image_url for m in cluster.members])
        if subject is None:
            self.no_subject += 1
            return []
        out = []
        for j, p in enumerate(prompts):
            # the template, not the mined subject phrase: a brand word must not read as a context word
            seed = hash64(f"{self.seed}:{cluster.cluster_id}:{j}") % (2**31)
            image = render_prompt(subject, p.template.format(subject=subject.noun), size=self.size, seed=seed)
            out.append(Target(image=image, prompt=p.text, skill=p.skill, expert=self.name))
        self.rendered[self.name] += len(out)
        return out


__all__ = ["WorldPrompts", "WorldExpert"]
