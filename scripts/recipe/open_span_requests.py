"""The span requests worth a lease: the open requests of `aspd transform --rewriter spans` (its
`OUTPUT.span_retry.jsonl`) whose answer the transform left serial. A usable reply to an answer the rules already
made parallel only replaces the rules' groups (ninth lease: 1,065 of 5,778 such answers re-marked, DP 0.634 ->
0.517, none gained), so those are left out. --never-sent also leaves out requests that already had a reply:
greedy decoding gives an unusable reply again (284 of 353 in the seventh lease), so retry those with sampling.

Usage: python scripts/recipe/open_span_requests.py OPEN.jsonl TRANSFORM.jsonl REPLIES.jsonl[.gz] OUT.jsonl.gz
       [--never-sent]
"""

from __future__ import annotations

import gzip
import json
import sys

from aspd.jsonl import iter_jsonl


def main() -> None:
    open_req, transform, replies, out = sys.argv[1:5]
    never_sent = "--never-sent" in sys.argv[5:]
    parallel = {obj["id"] for _, obj in iter_jsonl(transform) if obj["parallel"]}
    answered = {obj["id"] for _, obj in iter_jsonl(replies)}
    counts = {"open": 0, "answer_parallel": 0, "sent_before": 0, "kept": 0}
    with open(open_req, encoding="utf-8") as f, gzip.open(out, "wt", encoding="utf-8") as g:
        for line in f:
            rid = json.loads(line)["id"]
            counts["open"] += 1
            if rid in parallel:
                counts["answer_parallel"] += 1
            elif never_sent and rid in answered:
                counts["sent_before"] += 1
            else:
                g.write(line)
                counts["kept"] += 1
    print(json.dumps(counts))


if __name__ == "__main__":
    main()
