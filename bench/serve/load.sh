#!/usr/bin/env bash
# Load test of `nnc serve` on loopback (a documented run, not part of CI):
# throughput and p50/p99 latency at 1, 8 and 64 concurrent clients, with
# dynamic batching (--max-batch 64) and without (--max-batch 1), for
# mnist_mlp and lenet. Each request holds one MNIST test image, raw
# (0..255), as a client would send it.
#
#   cargo build --release && bench/serve/load.sh
#
# Environment: DATA (the shared data folder, with mnist/), MNIST_MLP and
# LENET (trained checkpoints, from `nnc run examples/NAME.nn --data-dir
# DATA --save W`), SECONDS_PER_POINT (default 4), NNC (the binary),
# MODELS (default "mnist_mlp lenet"), SERVE_ARGS (more `nnc serve` flags).
# The load generator is wrk (`apt-get install -y wrk`), one thread, one
# connection per client, every request answered before the next is sent.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
nnc=${NNC:-$root/target/release/nnc}
data=${DATA:-$root/../shared/data}
seconds=${SECONDS_PER_POINT:-4}
declare -A weights=(
  [mnist_mlp]=${MNIST_MLP:-$root/../runs/mnist_mlp.safetensors}
  [lenet]=${LENET:-$root/../runs/lenet.safetensors}
)

if ! command -v wrk >/dev/null; then
  echo "skipped: the load generator wrk is not installed (apt-get install -y wrk)"
  exit 0
fi
if [ ! -x "$nnc" ]; then
  echo "skipped: no nnc binary at $nnc (cargo build --release)"
  exit 0
fi
images=$data/mnist/t10k-images-idx3-ubyte.gz
if [ ! -f "$images" ]; then
  echo "skipped: no MNIST test images at $images (set DATA)"
  exit 0
fi

work=$(mktemp -d)
server=
cleanup() {
  if [ -n "$server" ]; then kill -TERM "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

# 64 request bodies, one image each, as JSON lines.
python3 - "$images" "$work/bodies.jsonl" <<'PY'
import gzip, json, struct, sys
raw = gzip.open(sys.argv[1]).read()
count, rows, cols = struct.unpack(">III", raw[4:16])
with open(sys.argv[2], "w") as out:
    for i in range(64):
        pixels = list(raw[16 + i * rows * cols:16 + (i + 1) * rows * cols])
        body = {"inputs": [{"name": "image", "shape": [1, rows * cols], "datatype": "FP32", "data": pixels}]}
        out.write(json.dumps(body, separators=(",", ":")) + "\n")
PY

printf '| model | batching | clients | requests/s | p50 ms | p99 ms |\n'
printf '|---|---|---|---|---|---|\n'
for model in ${MODELS:-mnist_mlp lenet}; do
  w=${weights[$model]}
  if [ ! -f "$w" ]; then
    echo "| $model | skipped: no checkpoint at $w | | | | |"
    continue
  fi
  for max_batch in 64 1; do
    "$nnc" serve "$root/examples/$model.nn" --weights "$w" --port 0 --max-batch "$max_batch" ${SERVE_ARGS:-} >"$work/server.log" 2>&1 &
    server=$!
    addr=
    for _ in $(seq 200); do
      addr=$(grep -o 'http://[0-9.]*:[0-9]*' "$work/server.log" || true)
      [ -n "$addr" ] && break
      sleep 0.05
    done
    [ -n "$addr" ] || { cat "$work/server.log"; exit 1; }
    name=$(grep -o 'models/[A-Za-z0-9_]*' "$work/server.log" | head -1 | cut -d/ -f2)
    url=$addr/v2/models/$name/infer
    # Warm the connections and caches.
    BODIES=$work/bodies.jsonl wrk -t1 -c8 -d1s -s "$root/bench/serve/load.lua" "$url" >/dev/null
    label=$([ "$max_batch" = 1 ] && echo "off (--max-batch 1)" || echo "on (--max-batch $max_batch)")
    for clients in 1 8 64; do
      out=$(BODIES=$work/bodies.jsonl wrk -t1 -c"$clients" -d"${seconds}s" --timeout 10s \
        -s "$root/bench/serve/load.lua" "$url")
      result=$(grep '^RESULT' <<<"$out" || true)
      if [ -z "$result" ]; then
        echo "wrk gave no result:" >&2
        echo "$out" >&2
        exit 1
      fi
      read -r _ requests _ rate p50 p99 failed <<<"$result"
      if [ "$failed" != 0 ]; then
        echo "$failed of $requests requests failed:" >&2
        echo "$out" >&2
        exit 1
      fi
      printf '| %s | %s | %d | %.0f | %.2f | %.2f |\n' "$model" "$label" "$clients" "$rate" "$p50" "$p99"
    done
    kill -TERM "$server"
    status=0
    wait "$server" || status=$?
    server=
    if [ "$status" != 0 ]; then
      echo "nnc serve exited with status $status after SIGTERM:" >&2
      cat "$work/server.log" >&2
      exit 1
    fi
  done
done
