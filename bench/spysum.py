"""Shares of a py-spy profile by function: ``bench/run.py --py-spy DIR`` writes them.

    .venv/bin/python bench/spysum.py DIR/ws-10000.txt [--top 30] [--under NAME]

Reads py-spy's ``--format raw`` output (one collapsed stack and its sample
count per line) and prints, as shares of all samples: the functions the
samples were in (self), and the functions on the stack (inclusive, each
counted once per sample). ``--under NAME`` keeps only the samples with a
frame containing NAME and gives shares of the whole profile.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter

_LINE = re.compile(r":\d+\)$")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("path")
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--under", default="", help="only samples with a frame containing this")
    a = p.parse_args(argv)
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = kept = 0
    with open(a.path) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            n = int(count)
            total += n
            frames = [_LINE.sub(")", fr) for fr in stack.split(";")]
            if a.under and not any(a.under in fr for fr in frames):
                continue
            kept += n
            own[frames[-1]] += n
            for fr in set(frames):
                incl[fr] += n
    print(f"{total} samples" + (f", {kept} under {a.under!r}" if a.under else ""))
    for title, counts in (("self", own), ("inclusive", incl)):
        print(f"-- {title}")
        for name, n in counts.most_common(a.top):
            print(f"{100 * n / max(1, total):5.1f}%  {name}")


if __name__ == "__main__":
    main()
