"""The span requests never sent to the teacher: the open requests of `aspd transform --rewriter spans` (its
`OUTPUT.span_retry.jsonl`) less those that already have a reply, usable or not. Greedy decoding gives an unusable
reply again (284 of 353 in the seventh lease), so a lease should spend its time on these first.

Usage: python scripts/recipe/never_sent_spans.py OPEN.jsonl REPLIES.jsonl[.gz] OUT.jsonl.gz
"""

from __future__ import annotations

import gzip
import json
import sys

from aspd.jsonl import iter_jsonl


def main() -> None:
    open_req, replies, out = sys.argv[1:4]
    answered = {obj["id"] for _, obj in iter_jsonl(replies)}
    kept = sent = 0
    with open(open_req, encoding="utf-8") as f, gzip.open(out, "wt", encoding="utf-8") as g:
        for line in f:
            if json.loads(line)["id"] in answered:
                sent += 1
            else:
                g.write(line)
                kept += 1
    print(json.dumps({"open": kept + sent, "sent_before": sent, "never_sent": kept}))


if __name__ == "__main__":
    main()
