"""Expected numbers for `recurrent.rs`'s PyTorch parity test.

Run with a Python that has torch:
    python3 dsl/tests/torch_recurrent.py > dsl/tests/fixtures/torch_recurrent.txt

Weights and inputs follow a formula the Rust test repeats (`value`), so
only the outputs are stored. Everything is float64.
"""
import math

import torch

B, T, IN, H = 2, 4, 3, 2
LENGTHS = [4, 2]


def value(name, i):
    seed = sum(name.encode()) % 97
    return 0.5 * math.sin(0.37 * i + 0.11 * seed)


def fill(module):
    for name, p in module.named_parameters():
        flat = [value(name, i) for i in range(p.numel())]
        with torch.no_grad():
            p.copy_(torch.tensor(flat, dtype=torch.float64).reshape(p.shape))


def inputs():
    flat = [value("x", i) for i in range(B * T * IN)]
    return torch.tensor(flat, dtype=torch.float64).reshape(B, T, IN)


def emit(name, t):
    print(name, " ".join(repr(v) for v in t.detach().reshape(-1).tolist()))


torch.manual_seed(0)
x = inputs()

# LSTM: 2 levels, bidirectional, packed sequences of lengths 4 and 2.
lstm = torch.nn.LSTM(IN, H, num_layers=2, bidirectional=True, batch_first=True).double()
fill(lstm)
packed = torch.nn.utils.rnn.pack_padded_sequence(x, LENGTHS, batch_first=True)
out, (h_n, _) = lstm(packed)
out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=T)
emit("lstm.sequences", out)
# h_n is [levels * dirs, b, H]; the top level's forward and backward, per sequence.
emit("lstm.last", torch.cat([h_n[-2], h_n[-1]], dim=1))

# GRU: one level, forward, every step real.
gru = torch.nn.GRU(IN, H, batch_first=True).double()
fill(gru)
out, h_n = gru(x)
emit("gru.sequences", out)
emit("gru.last", h_n[-1])
