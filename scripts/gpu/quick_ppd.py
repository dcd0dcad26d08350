"""Smoke check after training: how many of the first N Vicuna questions get a parallel group (hybrid, sampled).

Usage: python scripts/gpu/quick_ppd.py MODEL VICUNA.jsonl N
"""

import json
import sys

from aspd.engine.core import HybridEngine, Limits
from aspd.engine.sampling import SamplingParams

model, path, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
eng = HybridEngine.from_pretrained(model)
qs = [json.loads(line)["turns"][0] for line in open(path, encoding="utf-8")][:n]
with_group = 0
for i, q in enumerate(qs):
    g = eng.generate(q, sampling=SamplingParams(temperature=0.7, top_k=20, top_p=0.8, repetition_penalty=1.05, seed=i),
                     limits=Limits(max_new_tokens=512))
    with_group += g.stats.groups > 0
    print(json.dumps({"q": q[:60], **{k: round(v, 3) if isinstance(v, float) else v
                                        for k, v in g.stats.as_dict().items() if k != "branches"}}))
    if i < 2:
        print(g.raw[:1500])
print(f"PPD {with_group}/{len(qs)}")
