"""nnc against PyTorch on bn_digits.nn: a batch-norm CNN on the 8x8 digits,
30 full-batch steps (Adam, or SGD with momentum with OPT=sgd) from nnc's
initial weights, in float32 and float64. Prints each step's loss (nnc's,
torch float32's, torch float64's) and each param's largest difference from
the float64 run, relative to its largest magnitude. See bench/parity/README.md.

    python parity.py DIGITS_CSV_GZ INIT.safetensors FINAL.safetensors REPORT.json
"""
import gzip, json, os, sys
import torch
from safetensors.torch import load_file

digits, init, final, report = sys.argv[1:5]
rows = [l.split(",") for l in gzip.open(digits, "rt").read().split()]
x = torch.tensor([[float(v) for v in r[:64]] for r in rows], dtype=torch.float64).reshape(-1, 1, 8, 8) / 16
y = torch.tensor([int(float(r[64])) for r in rows])
nnc_losses = [e["train"]["loss"] for e in json.load(open(report))["per_epoch"]]


def train(dtype):
    torch.manual_seed(0)
    w = load_file(init)
    conv = torch.nn.Conv2d(1, 8, 3, padding=1, bias=False)
    bn = torch.nn.BatchNorm2d(8)
    dense = torch.nn.Linear(128, 10)
    with torch.no_grad():
        conv.weight.copy_(w["conv2d.w"])
        bn.weight.copy_(w["batchnorm.gamma"])
        bn.bias.copy_(w["batchnorm.beta"])
        bn.running_mean.copy_(w["batchnorm.running_mean"])
        bn.running_var.copy_(w["batchnorm.running_var"])
        dense.weight.copy_(w["dense.w"].T)
        dense.bias.copy_(w["dense.b"])
    model = torch.nn.Sequential(conv, bn, torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Flatten(), dense).to(dtype)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9) if os.environ.get("OPT") == "sgd" else torch.optim.Adam(model.parameters(), lr=1e-2)
    xs = x.to(dtype)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(xs), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return model, losses


m32, l32 = train(torch.float32)
m64, l64 = train(torch.float64)
got = load_file(final)
print("step  nnc              torch f32        torch f64        |nnc-f64|  |f32-f64|")
for i, (a, b, c) in enumerate(zip(nnc_losses, l32, l64)):
    print(f"{i + 1:4d}  {a:.9f}  {b:.9f}  {c:.9f}  {abs(a - c):.2e}   {abs(b - c):.2e}")
names = {"conv2d.w": "0.weight", "batchnorm.gamma": "1.weight", "batchnorm.beta": "1.bias",
         "batchnorm.running_mean": "1.running_mean", "batchnorm.running_var": "1.running_var",
         "dense.w": "5.weight", "dense.b": "5.bias"}
s32, s64 = m32.state_dict(), m64.state_dict()
print("param                   max|nnc-f64|/max|f64|   max|torch32-f64|/max|f64|")
for n, t in names.items():
    a = got[n].double()
    b, c = s32[t].double(), s64[t].double()
    if n == "dense.w":
        b, c = b.T, c.T
    scale = c.abs().max().item()
    print(f"{n:24s}{(a - c).abs().max().item() / scale:.3e}              {(b - c).abs().max().item() / scale:.3e}")
