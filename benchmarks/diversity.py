"""Accuracy against diversity on MovieLens-100K: MMR re-ranking (``recommend(diversity=λ)``) for
several λ, over the language model's item vectors (the quickstart config, item text on).

For each λ, every test user's top-10 is chosen by MMR from the 100 best items by p(watch), and
scored as in evaluation: watch Recall/NDCG@10, intra-list diversity (1 − cosine of the movies'
genre and year fields, the same space for every λ), catalog coverage and novelty (−log2 of the
share of users who watched a movie). One trained model (seed 2024; selected on validation).

    python benchmarks/diversity.py [--run DIR]

Writes benchmarks/results/diversity.{json,md,png}.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import quickstart_config

from polyrec.cli import DEFAULT_CONFIG
from polyrec.evaluate.evaluator import evaluate_ranking
from polyrec.recommender import MultiTaskRecommender
from polyrec.serve.rerank import Diversity

LAMBDAS = [0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9]
METRICS = ["recall@10", "ndcg@10", "ild@10", "coverage@10", "novelty@10"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="a trained run directory (default: train the quickstart config)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    if args.run is not None:
        rec = MultiTaskRecommender.load(args.run)
    else:
        rec = MultiTaskRecommender(quickstart_config(["train.progress=false"])).fit()
    space, measured = rec.diversity_vectors(), rec.field_vectors
    rows = []
    for lam in LAMBDAS:
        result = evaluate_ranking(rec.model, rec.objective, rec.test, len(rec.catalog.item_ids), [10],
                                  diversity=Diversity(space, lam), item_vectors=measured)["watch"]
        rows.append({"lambda": lam, **{m: result[m] for m in METRICS}})
        print(json.dumps(rows[-1]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    out = {"config": str(DEFAULT_CONFIG) if args.run is None else str(args.run), "task": "watch",
           "mmr_space": "language-model item vectors" if rec.model.tables.item_text.shape[1] else "item fields",
           "pool": 100, "rows": rows}
    (args.out / "diversity.json").write_text(json.dumps(out, indent=2) + "\n")
    table = ["| λ | Recall@10 | NDCG@10 | ILD@10 | coverage@10 | novelty@10 |", "|---|---|---|---|---|---|"]
    table += [f"| {r['lambda']} | " + " | ".join(f"{r[m]:.4f}" for m in METRICS) + " |" for r in rows]
    (args.out / "diversity.md").write_text("\n".join(table) + "\n")
    plot(rows, args.out / "diversity.png")
    print("\n".join(table))


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot([r["ild@10"] for r in rows], [r["ndcg@10"] for r in rows], marker="o")
    for r in rows:
        ax.annotate(f"λ={r['lambda']}", (r["ild@10"], r["ndcg@10"]), textcoords="offset points", xytext=(4, 4),
                    fontsize=8)
    ax.set_xlabel("intra-list diversity@10 (genre, year)")
    ax.set_ylabel("watch NDCG@10")
    ax.set_title("MovieLens-100K: MMR accuracy–diversity trade-off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
