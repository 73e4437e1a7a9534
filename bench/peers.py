"""nnc against the frameworks a user would pick instead, side by side.

Run through `bench/peers` (which makes the virtual environment and builds
nnc), not directly:

    bench/peers [--threads 2] [--rounds 3] [--only mlp-b32,lenet-b64] [--json FILE]

For every workload of issue 6's targets table it runs `nnc bench` and each
peer — PyTorch eager, JAX `jit`, ONNX Runtime (inference) — as separate
processes, alternating them round by round on the same shapes and thread
count, and reports the median over rounds of each one's median time, the
ratios (peer time / nnc time: above 1 means nnc is faster) and whether the
target is met. Models: `../shared/notes/peers.md` (mlp, lenet, cifar), with
nnc's versions in `bench/models/`. Data is synthetic: speed does not depend
on values.

A worker process times one peer: `peers.py --worker torch|jax|ort ...`.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))

# name, model, batch, what is timed.
WORKLOADS = [
    ("mlp-b32", "mlp", 32, "train"),
    ("mlp-b128", "mlp", 128, "train"),
    ("lenet-b64", "lenet", 64, "train"),
    ("cifar-b64", "cifar", 64, "train"),
    ("mlp-infer-b1", "mlp", 1, "infer"),
    ("lenet-infer-b1", "lenet", 1, "infer"),
    ("lstm-b32", "lstm", 32, "train"),
    ("lstm-infer-b1", "lstm", 1, "infer"),
    # Issue 16: int8 inference, nnc's integer products (`nnc bench --int8`)
    # against ONNX Runtime running the statically quantized QDQ model.
    ("lenet-int8-infer-b1", "lenet", 1, "infer-int8"),
]

PEERS = {"train": ["torch", "jax"], "infer": ["torch", "jax", "ort"], "infer-int8": ["ort"]}


def peers_of(model, mode):
    # ONNX Runtime is timed on the feed-forward models only.
    return [p for p in PEERS[mode] if not (model == "lstm" and p == "ort")]

# Issue 6's targets: the least speedup (peer time / nnc time) per peer.
TARGETS = {
    "mlp-b32": {"jax": 1.3, "torch": 3.0},
    "mlp-b128": {"jax": 1.0, "torch": 2.0},
    "lenet-b64": {"torch": 2.5},
    "cifar-b64": {"torch": 1.3},
    "mlp-infer-b1": {"ort": 1.0},
    "lenet-infer-b1": {"ort": 1.0},
    # Issue 14: embedding 10000x64 -> LSTM 128 -> last state -> dense 2,
    # sequence length 100, Adam.
    "lstm-b32": {"torch": 2.0, "jax": 1.0},
    "lstm-infer-b1": {"torch": 2.0},
    "lenet-int8-infer-b1": {"ort": 1.0},
}
COMPILE_TARGET_MS = 100.0

SAMPLE = {"mlp": (784,), "lenet": (1, 28, 28), "cifar": (3, 32, 32), "lstm": (100,)}

# The LSTM workload: token ids of SEQ steps from a VOCAB-word vocabulary.
VOCAB, EMBED, HIDDEN, SEQ, LSTM_CLASSES = 10000, 64, 128, 100, 2


def median_ms(fn, runs, warmup):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


# ---- PyTorch eager ----------------------------------------------------------

def torch_worker(model, batch, mode, runs, threads):
    import torch
    from torch import nn

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    if model == "lstm":
        return torch_lstm(batch, mode, runs)
    if model == "mlp":
        net = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(),
                            nn.Linear(128, 10))
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    elif model == "lenet":
        net = nn.Sequential(
            nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    else:
        net = nn.Sequential(
            nn.Conv2d(3, 32, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(1600, 1024), nn.ReLU(), nn.Linear(1024, 10))
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x = torch.randn(batch, *SAMPLE[model])
    y = torch.randint(0, 10, (batch,))
    loss_fn = nn.CrossEntropyLoss()
    if mode == "train":
        def step():
            opt.zero_grad(set_to_none=True)
            loss_fn(net(x), y).backward()
            opt.step()
        return {"ms": median_ms(step, runs, 10), "version": f"torch {torch.__version__} eager"}

    def infer():
        with torch.no_grad():
            net(x)
    return {"ms": median_ms(infer, runs, 50), "version": f"torch {torch.__version__} eager"}


def torch_lstm(batch, mode, runs):
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(VOCAB, EMBED)
            self.lstm = nn.LSTM(EMBED, HIDDEN, batch_first=True)
            self.out = nn.Linear(HIDDEN, LSTM_CLASSES)

        def forward(self, tokens):
            _, (h, _) = self.lstm(self.embed(tokens))
            return self.out(h[-1])

    net = Net()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x = torch.randint(0, VOCAB, (batch, SEQ))
    y = torch.randint(0, LSTM_CLASSES, (batch,))
    loss_fn = nn.CrossEntropyLoss()
    version = f"torch {torch.__version__} eager"
    if mode == "train":
        def step():
            opt.zero_grad(set_to_none=True)
            loss_fn(net(x), y).backward()
            opt.step()
        return {"ms": median_ms(step, runs, 5), "version": version}

    def infer():
        with torch.no_grad():
            net(x)
    return {"ms": median_ms(infer, runs, 20), "version": version}


# ---- JAX jit ----------------------------------------------------------------

def jax_lstm(batch, mode, runs):
    import jax
    import jax.numpy as jnp
    from jax import lax

    keys = jax.random.split(jax.random.PRNGKey(0), 8)
    bound = 1.0 / HIDDEN ** 0.5

    def uniform(key, shape):
        return jax.random.uniform(key, shape, minval=-bound, maxval=bound)

    params = {
        "embed": jax.random.normal(keys[0], (VOCAB, EMBED)),
        "w_ih": uniform(keys[1], (EMBED, 4 * HIDDEN)),
        "w_hh": uniform(keys[2], (HIDDEN, 4 * HIDDEN)),
        "b": uniform(keys[3], (4 * HIDDEN,)),
        "w_out": uniform(keys[4], (HIDDEN, LSTM_CLASSES)),
        "b_out": jnp.zeros((LSTM_CLASSES,)),
    }

    def forward(params, tokens):
        # The input projection of every step as one product, then a scan
        # over time with one [B, H] @ [H, 4H] product per step.
        xg = params["embed"][tokens] @ params["w_ih"] + params["b"]  # [B, T, 4H]

        def cell(carry, x):
            h, c = carry
            g = x + h @ params["w_hh"]
            i, f, gg, o = jnp.split(g, 4, axis=-1)
            c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(gg)
            h = jax.nn.sigmoid(o) * jnp.tanh(c)
            return (h, c), None

        zeros = jnp.zeros((tokens.shape[0], HIDDEN))
        (h, _), _ = lax.scan(cell, (zeros, zeros), jnp.swapaxes(xg, 0, 1))
        return h @ params["w_out"] + params["b_out"]

    def loss(params, x, y):
        logp = jax.nn.log_softmax(forward(params, x))
        return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))

    x = jax.random.randint(keys[5], (batch, SEQ), 0, VOCAB)
    y = jax.random.randint(keys[6], (batch,), 0, LSTM_CLASSES)
    version = f"jax {jax.__version__} jit + lax.scan"
    if mode == "infer":
        f = jax.jit(forward)
        t = time.perf_counter()
        f(params, x).block_until_ready()
        compile_ms = (time.perf_counter() - t) * 1e3
        ms = median_ms(lambda: f(params, x).block_until_ready(), runs, 20)
        return {"ms": ms, "compile_ms": compile_ms, "version": version}

    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)

    @jax.jit
    def train_step(params, m, v, step, x, y):
        grads = jax.grad(loss)(params, x, y)
        m = jax.tree_util.tree_map(lambda m, g: 0.9 * m + 0.1 * g, m, grads)
        v = jax.tree_util.tree_map(lambda v, g: 0.999 * v + 0.001 * g * g, v, grads)
        c1, c2 = 1 - 0.9 ** step, 1 - 0.999 ** step
        params = jax.tree_util.tree_map(
            lambda p, m, v: p - 1e-3 * (m / c1) / (jnp.sqrt(v / c2) + 1e-8), params, m, v)
        return params, m, v

    holder = {"p": params, "m": zeros, "v": zeros, "t": 1.0}

    def step():
        holder["p"], holder["m"], holder["v"] = train_step(
            holder["p"], holder["m"], holder["v"], holder["t"], x, y)
        jax.block_until_ready(holder["p"])

    t = time.perf_counter()
    step()
    compile_ms = (time.perf_counter() - t) * 1e3
    return {"ms": median_ms(step, runs, 5), "compile_ms": compile_ms, "version": version}


def jax_worker(model, batch, mode, runs, threads):
    # XLA's CPU thread pools are sized when the backend starts.
    if threads == 1:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                                   + " --xla_cpu_multi_thread_eigen=false"
                                   + " intra_op_parallelism_threads=1")
    if model == "lstm":
        return jax_lstm(batch, mode, runs)
    import jax
    import jax.numpy as jnp
    from jax import lax

    key = jax.random.PRNGKey(0)

    def dense(key, n_in, n_out):
        bound = (6.0 / (n_in + n_out)) ** 0.5
        return {"w": jax.random.uniform(key, (n_in, n_out), minval=-bound, maxval=bound),
                "b": jnp.zeros((n_out,))}

    def conv(key, c_out, c_in, k):
        bound = (6.0 / (c_in * k * k)) ** 0.5
        return {"w": jax.random.uniform(key, (c_out, c_in, k, k), minval=-bound, maxval=bound),
                "b": jnp.zeros((c_out,))}

    keys = jax.random.split(key, 8)
    if model == "mlp":
        params = [dense(keys[0], 784, 256), dense(keys[1], 256, 128), dense(keys[2], 128, 10)]
        convs, pads = [], []
    elif model == "lenet":
        params = [conv(keys[0], 6, 1, 5), conv(keys[1], 16, 6, 5), dense(keys[2], 400, 120),
                  dense(keys[3], 120, 84), dense(keys[4], 84, 10)]
        convs, pads = [0, 1], [2, 0]
    else:
        params = [conv(keys[0], 32, 3, 5), conv(keys[1], 64, 32, 5), dense(keys[2], 1600, 1024),
                  dense(keys[3], 1024, 10)]
        convs, pads = [0, 1], [0, 0]

    def forward(params, x):
        h = x
        for i, p in enumerate(params):
            if i in convs:
                pad = pads[i]
                h = lax.conv_general_dilated(h, p["w"], (1, 1), [(pad, pad), (pad, pad)],
                                             dimension_numbers=("NCHW", "OIHW", "NCHW"))
                h = jax.nn.relu(h + p["b"][None, :, None, None])
                h = lax.reduce_window(h, -jnp.inf, lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")
            else:
                if h.ndim > 2:
                    h = h.reshape(h.shape[0], -1)
                h = h @ p["w"] + p["b"]
                if i + 1 < len(params):
                    h = jax.nn.relu(h)
        return h

    def loss(params, x, y):
        logp = jax.nn.log_softmax(forward(params, x))
        return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))

    x = jax.random.normal(keys[5], (batch, *SAMPLE[model]))
    y = jax.random.randint(keys[6], (batch,), 0, 10)
    version = f"jax {jax.__version__} jit"
    if mode == "infer":
        f = jax.jit(forward)
        t = time.perf_counter()
        f(params, x).block_until_ready()
        compile_ms = (time.perf_counter() - t) * 1e3
        ms = median_ms(lambda: f(params, x).block_until_ready(), runs, 50)
        return {"ms": ms, "compile_ms": compile_ms, "version": version}

    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    if model == "lenet":
        state = zeros  # SGD momentum buffers

        def update(params, state, grads, step):
            state = jax.tree_util.tree_map(lambda v, g: 0.9 * v + g, state, grads)
            params = jax.tree_util.tree_map(lambda p, v: p - 0.01 * v, params, state)
            return params, state
    else:
        state = (zeros, zeros)  # Adam moments

        def update(params, state, grads, step):
            m, v = state
            m = jax.tree_util.tree_map(lambda m, g: 0.9 * m + 0.1 * g, m, grads)
            v = jax.tree_util.tree_map(lambda v, g: 0.999 * v + 0.001 * g * g, v, grads)
            c1, c2 = 1 - 0.9 ** step, 1 - 0.999 ** step
            params = jax.tree_util.tree_map(
                lambda p, m, v: p - 1e-3 * (m / c1) / (jnp.sqrt(v / c2) + 1e-8), params, m, v)
            return params, (m, v)

    @jax.jit
    def train_step(params, state, step, x, y):
        grads = jax.grad(loss)(params, x, y)
        return update(params, state, grads, step)

    holder = {"p": params, "s": state, "t": 1.0}

    def step():
        holder["p"], holder["s"] = train_step(holder["p"], holder["s"], holder["t"], x, y)
        jax.block_until_ready(holder["p"])

    t = time.perf_counter()
    step()
    compile_ms = (time.perf_counter() - t) * 1e3
    return {"ms": median_ms(step, runs, 10), "compile_ms": compile_ms, "version": version}


# ---- ONNX Runtime -----------------------------------------------------------

def ort_worker(model, batch, mode, runs, threads):
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    if mode not in ("infer", "infer-int8"):
        raise SystemExit("ONNX Runtime is timed for inference only")
    rng = np.random.default_rng(0)
    inits, nodes = [], []

    def init(name, shape):
        inits.append(numpy_helper.from_array(
            (rng.standard_normal(shape) * 0.05).astype(np.float32), name))
        return name

    def op(kind, inputs, **attrs):
        out = f"t{len(nodes)}"
        nodes.append(helper.make_node(kind, inputs, [out], **attrs))
        return out

    h = "x"
    if model == "mlp":
        shape = [batch, 784]
        dims = [784, 256, 128, 10]
    else:
        shape = [batch, 1, 28, 28]
        h = op("Conv", [h, init("c1w", (6, 1, 5, 5)), init("c1b", (6,))], pads=[2, 2, 2, 2])
        h = op("MaxPool", [op("Relu", [h])], kernel_shape=[2, 2], strides=[2, 2])
        h = op("Conv", [h, init("c2w", (16, 6, 5, 5)), init("c2b", (16,))])
        h = op("MaxPool", [op("Relu", [h])], kernel_shape=[2, 2], strides=[2, 2])
        h = op("Flatten", [h])
        dims = [400, 120, 84, 10]
    for i in range(len(dims) - 1):
        h = op("Gemm", [h, init(f"w{i}", (dims[i], dims[i + 1])), init(f"b{i}", (dims[i + 1],))])
        if i + 2 < len(dims):
            h = op("Relu", [h])
    graph = helper.make_graph(
        nodes, model, [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(h, TensorProto.FLOAT, None)], inits)
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx_model.ir_version = 8
    if mode == "infer-int8":
        onnx_model = qdq(onnx_model, shape, rng)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(onnx_model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    x = rng.standard_normal(shape).astype(np.float32)
    ms = median_ms(lambda: session.run(None, {"x": x}), runs, 50)
    return {"ms": ms, "version": f"onnxruntime {ort.__version__}"}


def qdq(onnx_model, shape, rng):
    """The model statically quantized as ONNX Runtime recommends for CPU:
    QDQ format, u8 activations, s8 weights per channel, calibrated on a few
    synthetic batches."""
    import tempfile

    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)

    class Batches(CalibrationDataReader):
        def __init__(self):
            self.left = [{"x": rng.standard_normal(shape).astype("float32")} for _ in range(8)]

        def get_next(self):
            return self.left.pop() if self.left else None

    with tempfile.TemporaryDirectory() as tmp:
        f32, q = os.path.join(tmp, "f32.onnx"), os.path.join(tmp, "qdq.onnx")
        onnx.save(onnx_model, f32)
        quantize_static(f32, q, Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        return onnx.load(q)


WORKERS = {"torch": torch_worker, "jax": jax_worker, "ort": ort_worker}


# ---- the driver -------------------------------------------------------------

def run_json(cmd):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def runs_for(model, mode):
    if mode.startswith("infer"):
        return 300 if model == "lstm" else 2000
    return {"mlp": 300, "lenet": 150, "cifar": 30, "lstm": 30}[model]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nnc", default=os.path.join(HERE, "..", "target", "release", "nnc"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", default="", help="comma-separated workload names")
    ap.add_argument("--json", dest="json_out", help="also write the results here")
    ap.add_argument("--worker", choices=sorted(WORKERS))
    ap.add_argument("--model", choices=sorted(SAMPLE))
    ap.add_argument("--batch", type=int)
    ap.add_argument("--mode", choices=["train", "infer", "infer-int8"])
    ap.add_argument("--runs", type=int)
    args = ap.parse_args()

    if args.worker:
        result = WORKERS[args.worker](args.model, args.batch, args.mode, args.runs, args.threads)
        print(json.dumps(result))
        return

    only = [w for w in args.only.split(",") if w]
    workloads = [w for w in WORKLOADS if not only or w[0] in only]
    samples = {}  # (workload, runner) -> [ms per round]
    compile_ms = {}  # runner/model -> [ms]
    versions = {}
    for r in range(args.rounds):
        for name, model, batch, mode in workloads:
            runners = ["nnc"] + peers_of(model, mode)
            # Alternate who goes first, round by round.
            if r % 2:
                runners = runners[::-1]
            for runner in runners:
                runs = runs_for(model, mode)
                if runner == "nnc":
                    cmd = [args.nnc, "bench", os.path.join(HERE, "models", f"{model}.nn"),
                           "--batch", str(max(batch, 1)), "--threads", str(args.threads),
                           "--runs", str(runs), "--json"]
                    if mode == "infer-int8":
                        cmd.append("--int8")
                    out = run_json(cmd)
                    ms = out["train_step_ms"] if mode == "train" else out["infer_one_ms"]
                    compile_ms.setdefault(f"nnc {model}", []).append(out["compile_ms"])
                    versions["nnc"] = "nnc (this checkout)"
                else:
                    cmd = [sys.executable, os.path.abspath(__file__), "--worker", runner,
                           "--model", model, "--batch", str(batch), "--mode", mode,
                           "--runs", str(runs), "--threads", str(args.threads)]
                    out = run_json(cmd)
                    ms = out["ms"]
                    versions[runner] = out["version"]
                    if "compile_ms" in out and mode == "train":
                        compile_ms.setdefault(f"{runner} {model}", []).append(out["compile_ms"])
                samples.setdefault((name, runner), []).append(ms)
                print(f"round {r + 1}: {name:15} {runner:6} {ms:9.4f} ms", file=sys.stderr)

    results = []
    for name, model, batch, mode in workloads:
        nnc = statistics.median(samples[(name, "nnc")])
        row = {"workload": name, "threads": args.threads, "nnc_ms": nnc, "peers": {}}
        for peer in peers_of(model, mode):
            ms = statistics.median(samples[(name, peer)])
            target = TARGETS.get(name, {}).get(peer)
            row["peers"][peer] = {
                "ms": ms, "speedup": ms / nnc, "target": target,
                "met": None if target is None else ms / nnc >= target,
            }
        results.append(row)
    compiles = {k: statistics.median(v) for k, v in compile_ms.items()}

    print(f"\n{args.threads} thread(s), median of {args.rounds} alternating rounds; "
          "speedup = peer time / nnc time\n")
    print("| workload | nnc ms | peer | peer ms | speedup | target | met |")
    print("|---|---|---|---|---|---|---|")
    for row in results:
        for peer, p in row["peers"].items():
            target = f"≥ {p['target']}×" if p["target"] else ""
            met = {True: "yes", False: "**no**", None: ""}[p["met"]]
            print(f"| {row['workload']} | {row['nnc_ms']:.4f} | {versions.get(peer, peer)} "
                  f"| {p['ms']:.4f} | {p['speedup']:.2f}× | {target} | {met} |")
    print("\n| compile (train step, first call) | ms | target |\n|---|---|---|")
    for k, v in sorted(compiles.items()):
        target = f"< {COMPILE_TARGET_MS:.0f} ms: {'yes' if v < COMPILE_TARGET_MS else '**no**'}" \
            if k.startswith("nnc") else ""
        print(f"| {k} | {v:.1f} | {target} |")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"threads": args.threads, "rounds": args.rounds, "versions": versions,
                       "workloads": results, "compile_ms": compiles}, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
