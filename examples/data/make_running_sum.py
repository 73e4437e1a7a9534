"""Writes running_sum.csv.gz: a small sequence-labelling task for
examples/running_sum.nn, where the model must emit an output at every step.

Each row is one sequence: 20 symbols from {0, 1, 2}, then 20 labels, label t
being (x_0 + ... + x_t) mod 4, the running sum of the symbols so far. A
model that reads one symbol at a time needs a state that carries the sum
(a feed-forward model looking at one position cannot beat about 25%).

    python3 examples/data/make_running_sum.py   # deterministic: seed 14
"""

import gzip
import os
import random

LENGTH, ROWS, SEED = 20, 6000, 14


def main():
    rng = random.Random(SEED)
    lines = []
    for _ in range(ROWS):
        xs = [rng.randrange(3) for _ in range(LENGTH)]
        total, labels = 0, []
        for x in xs:
            total += x
            labels.append(total % 4)
        lines.append(",".join(map(str, xs + labels)))
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "running_sum.csv.gz")
    # mtime=0: the same bytes on every run.
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
        f.write(("\n".join(lines) + "\n").encode())


if __name__ == "__main__":
    main()
