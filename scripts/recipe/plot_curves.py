"""Training curves of the recipe's fine-tunes (ASPD against Seq, LoRA against full) from their loss histories.

Usage: python scripts/recipe/plot_curves.py OUT.png NAME=loss_history.json [NAME=loss_history.json ...]
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out, specs = sys.argv[1], sys.argv[2:]
    fig, ax = plt.subplots(figsize=(7, 4))
    for spec in specs:
        name, path = spec.split("=", 1)
        hist = [h for h in json.loads(Path(path).read_text()) if "loss" in h]
        pts = [(h["step"], h["loss"]) for h in hist if not math.isnan(float(h.get("grad_norm", 0.0)))]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], label=name, linestyle="--" if "seq" in name else "-")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (per answer token)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
