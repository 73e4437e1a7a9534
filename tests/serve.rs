//! `nnc serve` over real sockets with a real HTTP client, on the digits MLP
//! (its data ships with the examples): answers equal to `nnc run
//! --predict` bit for bit (float, pruned and quantized checkpoints),
//! batching under concurrency, every refusal with its status while good
//! requests go on, graceful shutdown in process and by SIGTERM.

use nnc::driver::{self, QuantizeOptions, RunOutcome, RunSettings};
use nnc::serve::{ServeOptions, Server};
use nnc_runtime::compress::{PruneOptions, Saliency};
use nnc_runtime::quantize::Method;
use nnc_runtime::{Backend, RunOptions, TrainOptions};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

mod common;
use common::Scratch;

fn digits() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/digits_mlp.nn")
}

/// A digits checkpoint after a couple of epochs: enough to give
/// distinct outputs.
fn train(dir: &Scratch) -> PathBuf {
    let save = dir.path("digits.safetensors");
    let run = RunOptions {
        save: Some(save.clone()),
        train: TrainOptions {
            epochs: Some(2),
            ..Default::default()
        },
        ..Default::default()
    };
    let settings = RunSettings {
        run,
        ..Default::default()
    };
    driver::run_with(&digits(), &settings, &mut |_| {}).unwrap();
    save
}

/// `n` raw digits samples (64 pixels of 0..=16 each), all different.
fn samples(n: usize) -> Vec<Vec<u8>> {
    let mut state: u64 = 0x2545_F491_4F6C_DD1D;
    (0..n)
        .map(|_| {
            (0..64)
                .map(|_| {
                    state = state
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1_442_695_040_888_963_407);
                    ((state >> 33) % 17) as u8
                })
                .collect()
        })
        .collect()
}

/// What `nnc run --predict` gives for `samples` (a CSV of them): each
/// sample's logits as `f32` bits.
fn predicted(dir: &Scratch, weights: &Path, samples: &[Vec<u8>]) -> Vec<Vec<u32>> {
    let text: String = samples
        .iter()
        .map(|s| {
            let row: Vec<String> = s.iter().map(u8::to_string).collect();
            row.join(",") + "\n"
        })
        .collect();
    let csv = dir.write("samples.csv", &text);
    let run = RunOptions {
        weights: Some(weights.to_path_buf()),
        predict: Some(csv),
        ..Default::default()
    };
    let settings = RunSettings {
        run,
        ..Default::default()
    };
    match driver::run_with(&digits(), &settings, &mut |_| {}) {
        Ok(RunOutcome::Predicted(p)) => p
            .iter()
            .map(|p| {
                p.outputs[0]
                    .1
                    .iter()
                    .map(|&v| (v as f32).to_bits())
                    .collect()
            })
            .collect(),
        Ok(other) => panic!("expected predictions, got {other:?}"),
        Err(f) => panic!("{f}"),
    }
}

fn start(weights: &Path, configure: impl FnOnce(&mut ServeOptions)) -> Server {
    let mut options = ServeOptions::new(weights.to_path_buf());
    options.port = 0;
    configure(&mut options);
    Server::start(&digits(), &options, false).unwrap_or_else(|f| panic!("{f}"))
}

/// Status and body of a request; a status of 400 or more is an answer
/// too, not an error.
fn call(method: &str, url: &str, body: Option<&str>) -> (u16, String) {
    let request = ureq::request(method, url).timeout(Duration::from_secs(60));
    let result = match body {
        Some(b) => request
            .set("Content-Type", "application/json")
            .send_string(b),
        None => request.call(),
    };
    match result {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap()),
        Err(e) => panic!("{method} {url}: {e}"),
    }
}

fn infer_body(samples: &[Vec<u8>], nested: bool) -> String {
    let data: Value = if nested {
        json!(samples)
    } else {
        json!(samples.iter().flatten().collect::<Vec<_>>())
    };
    json!({"inputs": [{"name": "image", "shape": [samples.len(), 64], "datatype": "FP32", "data": data}]})
        .to_string()
}

/// The logits of each sample in an answer, as `f32` bits.
fn logits(body: &str) -> Vec<Vec<u32>> {
    let v: Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["model_name"], "DigitsMLP", "{body}");
    let out = &v["outputs"][0];
    assert_eq!(out["name"], "logits");
    assert_eq!(out["datatype"], "FP32");
    let shape: Vec<usize> = serde_json::from_value(out["shape"].clone()).unwrap();
    let data: Vec<f64> = serde_json::from_value(out["data"].clone()).unwrap();
    assert_eq!(shape[1], 10);
    assert_eq!(data.len(), shape[0] * 10);
    data.chunks(10)
        .map(|row| row.iter().map(|&x| (x as f32).to_bits()).collect())
        .collect()
}

fn infer(server: &Server, samples: &[Vec<u8>], nested: bool) -> Vec<Vec<u32>> {
    let url = format!("http://{}/v2/models/DigitsMLP/infer", server.addr());
    let (status, body) = call("POST", &url, Some(&infer_body(samples, nested)));
    assert_eq!(status, 200, "{body}");
    logits(&body)
}

fn metrics(server: &Server) -> String {
    call("GET", &format!("http://{}/metrics", server.addr()), None).1
}

/// The value of the metric line `name` (labels included).
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no `{name}` in\n{text}"))
}

#[test]
fn health_metadata_and_answers_equal_to_predict_for_float_pruned_and_int8_checkpoints() {
    let dir = Scratch::new("answers");
    let float = train(&dir);
    let pruned = dir.path("pruned.safetensors");
    let options = PruneOptions {
        ratio: 0.5,
        layers: Vec::new(),
        saliency: Saliency::L1,
        global: false,
    };
    nnc::compress::prune(&digits(), &float, &pruned, &options, None, &mut |_| {}).unwrap();
    let int8 = dir.path("int8.safetensors");
    let quantize = QuantizeOptions {
        weights: float.clone(),
        output: int8.clone(),
        batches: 4,
        method: Method::MinMax,
        backend: Backend::Jit,
        data_dir: None,
        model: None,
        qat: false,
    };
    driver::quantize(&digits(), &quantize, &mut |_| {}).unwrap();

    let inputs = samples(5);
    let mut answers = Vec::new();
    for weights in [&float, &pruned, &int8] {
        let expected = predicted(&dir, weights, &inputs);
        let server = start(weights, |_| {});
        let base = format!("http://{}", server.addr());
        assert_eq!(call("GET", &format!("{base}/v2/health/live"), None).0, 200);
        assert_eq!(call("GET", &format!("{base}/v2/health/ready"), None).0, 200);
        let (status, body) = call("GET", &format!("{base}/v2"), None);
        assert_eq!(status, 200);
        assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["name"], "nnc");
        let (status, body) = call("GET", &format!("{base}/v2/models/DigitsMLP"), None);
        assert_eq!(status, 200, "{body}");
        let meta: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            meta,
            json!({
                "name": "DigitsMLP", "versions": ["1"], "platform": "nnc",
                "inputs": [{"name": "image", "datatype": "FP32", "shape": [-1, 64]}],
                "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}]
            })
        );
        // All at once, flat; one by one, nested.
        assert_eq!(infer(&server, &inputs, false), expected);
        for (sample, want) in inputs.iter().zip(&expected) {
            let got = infer(&server, std::slice::from_ref(sample), true);
            assert_eq!(&got[0], want);
        }
        server.shut_down().unwrap();
        answers.push(expected);
    }
    // The three checkpoints are three models.
    assert_ne!(answers[0], answers[1]);
    assert_ne!(answers[0], answers[2]);
}

/// 16 clients at once, each with its own samples: every answer is that
/// of the samples alone; with batching some batch ran several requests,
/// with `--max-batch 1` none did.
#[test]
fn concurrent_requests_run_in_batches_and_each_gets_its_own_answer() {
    let dir = Scratch::new("concurrent");
    let weights = train(&dir);
    let inputs = samples(32);
    let expected = predicted(&dir, &weights, &inputs);
    for max_batch in [64, 1] {
        let server = Arc::new(start(&weights, |o| {
            o.max_batch = max_batch;
            o.max_delay = Duration::from_millis(50);
        }));
        // Whether 16 clients' requests overlap is up to the scheduler (a
        // batch waits only for requests already arriving): on a loaded
        // machine they may come one after another, so with batching on
        // the round repeats, up to 10 times, until one batch held several.
        let mut rounds = 0;
        let text = loop {
            rounds += 1;
            let barrier = Arc::new(Barrier::new(16));
            let threads: Vec<_> = (0..16)
                .map(|t| {
                    let (server, barrier) = (server.clone(), barrier.clone());
                    let (mine, want) = (
                        inputs[2 * t..2 * t + 2].to_vec(),
                        expected[2 * t..2 * t + 2].to_vec(),
                    );
                    std::thread::spawn(move || {
                        barrier.wait();
                        // One or two samples per request.
                        let got = match t % 2 {
                            0 => infer(&server, &mine, t % 4 == 0),
                            _ => [
                                infer(&server, &mine[..1], false),
                                infer(&server, &mine[1..], true),
                            ]
                            .concat(),
                        };
                        assert_eq!(got, want, "client {t}");
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            let text = metrics(&server);
            let several = metric(&text, "nnc_batch_requests_bucket{le=\"1\"}")
                < metric(&text, "nnc_batch_requests_count");
            if max_batch == 1 || several || rounds == 10 {
                break text;
            }
        };
        let batches = metric(&text, "nnc_batch_requests_count");
        let alone = metric(&text, "nnc_batch_requests_bucket{le=\"1\"}");
        let requests = 24.0 * f64::from(rounds);
        assert_eq!(metric(&text, "nnc_batch_requests_sum"), requests, "{text}");
        // Every inference, and the `/metrics` reads of the rounds before.
        assert_eq!(
            metric(&text, "nnc_requests_total{status=\"200\"}"),
            requests + f64::from(rounds - 1),
            "{text}"
        );
        if max_batch == 1 {
            assert_eq!(alone, batches, "{text}");
        } else {
            assert!(
                alone < batches,
                "no batch of several requests in {rounds} rounds:\n{text}"
            );
        }
        Arc::try_unwrap(server)
            .unwrap_or_else(|_| panic!("a client still holds the server"))
            .shut_down()
            .unwrap();
    }
}

#[test]
fn bad_requests_get_their_status_and_message_while_good_ones_stay_right() {
    let dir = Scratch::new("errors");
    let weights = train(&dir);
    let inputs = samples(4);
    let expected = predicted(&dir, &weights, &inputs);
    let server = Arc::new(start(&weights, |o| {
        o.body_limit = 16 << 10;
        o.max_delay = Duration::from_millis(5);
    }));
    let stop = Arc::new(AtomicBool::new(false));
    let good = Arc::new(AtomicUsize::new(0));
    let load: Vec<_> = (0..3)
        .map(|t| {
            let (server, stop, good) = (server.clone(), stop.clone(), good.clone());
            let (inputs, expected) = (inputs.clone(), expected.clone());
            std::thread::spawn(move || {
                let mut i = t;
                while !stop.load(Ordering::SeqCst) {
                    let k = i % inputs.len();
                    let got = infer(&server, std::slice::from_ref(&inputs[k]), false);
                    assert_eq!(got[0], expected[k]);
                    good.fetch_add(1, Ordering::SeqCst);
                    i += 1;
                }
            })
        })
        .collect();

    let base = format!("http://{}", server.addr());
    let url = format!("{base}/v2/models/DigitsMLP/infer");
    let one = |name: &str, shape: Value, datatype: &str, data: Value| {
        json!({"inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": data}]})
            .to_string()
    };
    let pixels = json!(inputs[0]);
    let too_large = infer_body(&samples(200), false);
    assert!(too_large.len() > 16 << 10);
    let cases: Vec<(String, String, u16, &str)> = vec![
        (url.clone(), "{\"inputs\": [".into(), 400, "malformed JSON"),
        (
            url.clone(),
            one("image", json!([1, 63]), "FP32", json!(vec![0; 63])),
            400,
            "has shape [1, 63], expected [N, 64]",
        ),
        (
            url.clone(),
            one("image", json!([1, 64]), "INT32", pixels.clone()),
            400,
            "has datatype INT32, expected FP32",
        ),
        (
            url.clone(),
            one("image", json!([2, 64]), "FP32", pixels.clone()),
            400,
            "(128 values) but its data holds 64",
        ),
        (
            url.clone(),
            json!({"inputs": []}).to_string(),
            400,
            "gives no input `image`",
        ),
        (
            url.clone(),
            one("pixels", json!([1, 64]), "FP32", pixels.clone()),
            400,
            "has no input `pixels`",
        ),
        (url.clone(), too_large, 413, "over the limit of 16384 bytes"),
        (
            format!("{base}/v2/models/LeNet/infer"),
            one("image", json!([1, 64]), "FP32", pixels.clone()),
            404,
            "no model `LeNet`; this server serves `DigitsMLP`",
        ),
    ];
    for (url, body, status, message) in &cases {
        let (got, text) = call("POST", url, Some(body));
        assert_eq!(got, *status, "{text}");
        let error: Value = serde_json::from_str(&text).unwrap();
        let error = error["error"].as_str().unwrap();
        assert!(
            error.contains(message),
            "`{error}` does not say `{message}`"
        );
    }
    assert_eq!(call("GET", &format!("{base}/v2/models/LeNet"), None).0, 404);
    // Until the good requests have overlapped the bad ones a while.
    let started = Instant::now();
    while good.load(Ordering::SeqCst) < 30 && started.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::SeqCst);
    for t in load {
        t.join().unwrap();
    }
    assert!(good.load(Ordering::SeqCst) >= 30);
    let text = metrics(&server);
    assert_eq!(
        metric(&text, "nnc_requests_total{status=\"400\"}"),
        6.0,
        "{text}"
    );
    assert_eq!(
        metric(&text, "nnc_requests_total{status=\"413\"}"),
        1.0,
        "{text}"
    );
    assert_eq!(metric(&text, "nnc_request_errors_total"), 9.0, "{text}");

    // Shutting down: new requests and readiness get 503.
    server.drain();
    let (status, text) = call("POST", &url, Some(&infer_body(&inputs[..1], false)));
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("shutting down"), "{text}");
    assert_eq!(call("GET", &format!("{base}/v2/health/ready"), None).0, 503);
    assert_eq!(call("GET", &format!("{base}/v2/health/live"), None).0, 200);
    Arc::try_unwrap(server)
        .unwrap_or_else(|_| panic!("a client still holds the server"))
        .shut_down()
        .unwrap();
}

#[test]
fn a_checkpoint_of_another_model_is_refused_at_start_naming_a_tensor() {
    let dir = Scratch::new("other");
    let xor = dir.path("xor.safetensors");
    let run = RunOptions {
        save: Some(xor.clone()),
        train: TrainOptions {
            epochs: Some(1),
            ..Default::default()
        },
        ..Default::default()
    };
    let xor_nn = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/xor.nn");
    let settings = RunSettings {
        run,
        ..Default::default()
    };
    driver::run_with(&xor_nn, &settings, &mut |_| {}).unwrap();
    let mut options = ServeOptions::new(xor);
    options.port = 0;
    let error = match Server::start(&digits(), &options, false) {
        Ok(_) => panic!("served a checkpoint of another model"),
        Err(f) => f.to_string(),
    };
    assert!(
        error.contains("is for model `Xor`, not `DigitsMLP`") && error.contains("`dense."),
        "{error}"
    );
}

/// The binary, as a user runs it: SIGTERM while a request waits for its
/// batch; the request is answered, then the process exits 0.
#[cfg(unix)]
#[test]
fn sigterm_answers_the_request_in_flight_then_exits_0() {
    let dir = Scratch::new("sigterm");
    let weights = train(&dir);
    let inputs = samples(1);
    let expected = predicted(&dir, &weights, &inputs);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_nnc"))
        .arg("serve")
        .arg(digits())
        .arg("--weights")
        .arg(&weights)
        .args(["--port", "0", "--max-delay-ms", "5000", "--threads", "1"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let addr = first
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_else(|| panic!("no address in `{first}`"))
        .to_string();
    let body = infer_body(&inputs, false);
    let url = format!("http://{addr}/v2/models/DigitsMLP/infer");
    let started = Instant::now();
    let request = std::thread::spawn(move || call("POST", &url, Some(&body)));
    // The lone request waits up to 5 s for others to batch with.
    std::thread::sleep(Duration::from_millis(500));
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let (status, body) = request.join().unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(logits(&body), expected);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the shutdown waited for the batch delay"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let exit = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the server did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "{exit:?}");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(rest.iter().any(|l| l.contains("shut down")), "{rest:?}");
}
