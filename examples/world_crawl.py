"""Write a synthetic img2dataset-style crawl of the world (shards + ground_truth.json), and score
clusters against its ground truth.

    python examples/world_crawl.py --out runs/world_crawl --shop-pages 160
    # after `suti build-dataset` has written ICL shards from it:
    python examples/world_crawl.py --out runs/world_crawl --score "runs/built/icl-*.tar"
"""
import argparse
import glob
import json

from suti.demo.crawl import CrawlConfig, score_clusters, write_crawl

ap = argparse.ArgumentParser()
ap.add_argument("--out", required=True)
ap.add_argument("--shop-pages", type=int, default=160)
ap.add_argument("--junk-pages", type=int, default=30)
ap.add_argument("--seed", type=int, default=0)
ap.add_argument("--score", help="glob of the dataset builder's ICL shards to score against the ground truth")
args = ap.parse_args()

truth = write_crawl(args.out, CrawlConfig(shop_pages=args.shop_pages, junk_pages=args.junk_pages, seed=args.seed))
kinds = {}
for record in truth["records"].values():
    kinds[record["kind"]] = kinds.get(record["kind"], 0) + 1
print(f"{len(truth['records'])} records in {args.out}: {kinds}; {len(truth['subjects'])} subjects")
if args.score:
    scores = score_clusters(sorted(glob.glob(args.score)), args.out)
    scores.pop("per_cluster")
    print(json.dumps(scores, indent=2))
