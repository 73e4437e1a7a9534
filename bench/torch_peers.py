"""PyTorch eager versions of the models in ../shared/notes/peers.md, timed
the way `nnc bench` times ours: median train step (forward, backward,
optimizer update) and median inference latency, on synthetic data.

    python3 bench/torch_peers.py lenet --batch 64 --threads 1 [--json]

Needs a CPU build of PyTorch (on Debian: `apt-get install python3-torch`,
then run with /usr/bin/python3).
"""

import argparse
import json
import statistics
import sys
import time

import torch
from torch import nn


def mlp():
    return nn.Sequential(
        nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(),
        nn.Linear(128, 10),
    ), (1, 28, 28), lambda p: torch.optim.Adam(p, lr=1e-3)


def lenet():
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
        nn.Linear(84, 10),
    ), (1, 28, 28), lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9)


def cifar():
    return nn.Sequential(
        nn.Conv2d(3, 32, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(1600, 1024), nn.ReLU(), nn.Linear(1024, 10),
    ), (3, 32, 32), lambda p: torch.optim.Adam(p, lr=1e-3)


MODELS = {"mlp": mlp, "lenet": lenet, "cifar": cifar}


def median_ms(fn, runs, warmup):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model", choices=sorted(MODELS))
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net, sample, make_opt = MODELS[args.model]()
    opt = make_opt(net.parameters())
    loss_fn = nn.CrossEntropyLoss()
    x = torch.randn(args.batch, *sample)
    y = torch.randint(0, 10, (args.batch,))

    def step():
        opt.zero_grad(set_to_none=True)
        loss_fn(net(x), y).backward()
        opt.step()

    x1 = torch.randn(1, *sample)

    def infer():
        with torch.no_grad():
            net(x1)

    result = {
        "peer": f"torch {torch.__version__} eager",
        "model": args.model,
        "batch": args.batch,
        "threads": args.threads,
        "train_step_ms": median_ms(step, args.runs, 20),
        "inference_batch1_ms": median_ms(infer, args.runs * 5, 50),
    }
    if args.json:
        json.dump(result, sys.stdout)
        print()
    else:
        print(f"{result['peer']}, {args.model}, batch {args.batch}, {args.threads} thread(s): "
              f"train step {result['train_step_ms']:.3f} ms, "
              f"inference batch 1 {result['inference_batch1_ms']:.4f} ms")


if __name__ == "__main__":
    main()
