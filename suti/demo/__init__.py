"""The subject world: a procedural world with ground truth that proves the engine without pretrained weights.

Modules: `world` (subjects, contexts, prompts, renderer), `crawl` (img2dataset-style synthetic crawl,
ground truth, cluster scoring), `heldout` (the 30-subject benchmark, in-context training examples, the
renderer as expert), `judges` (identity and attribute judge model), `judge_weights` (the shipped judge),
`train_judges`, `world_clip` (a tiny open_clip trained on the crawl). See docs/world.md.
Nothing in the core import path imports this package.
"""
