//! `nnc serve`: a trained model behind the open inference protocol (KServe
//! v2) over HTTP/JSON, with dynamic batching and Prometheus metrics.
//!
//! The HTTP side (axum on tokio, `http.rs`) checks each request and turns
//! its samples into the model's input (`model.rs`, by the code `nnc run
//! --predict` runs), then queues it; one thread owns the JIT and runs the
//! queued requests in batches (`batcher.rs`), answering each with its
//! rows.

mod batcher;
mod http;
mod metrics;
mod model;
pub mod protocol;

use crate::diagnostic;
use crate::driver::{Failure, OptLevel};
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::Notify;

/// What `nnc serve` was asked.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub weights: PathBuf,
    pub host: IpAddr,
    /// 0: the system chooses.
    pub port: u16,
    /// Samples per batch at most; 1 runs each request alone.
    pub max_batch: usize,
    /// How long the first request of a batch waits for others.
    pub max_delay: Duration,
    /// Larger request bodies are refused (413).
    pub body_limit: usize,
    pub model: Option<String>,
    pub opt: OptLevel,
}

impl ServeOptions {
    /// The defaults of the command line for `weights`.
    pub fn new(weights: PathBuf) -> ServeOptions {
        ServeOptions {
            weights,
            host: IpAddr::from([127, 0, 0, 1]),
            port: 8000,
            max_batch: 64,
            max_delay: Duration::from_millis(2),
            body_limit: 16 << 20,
            model: None,
            opt: OptLevel::default(),
        }
    }
}

/// How a running server is stopped.
struct Control {
    state: Arc<http::AppState>,
    stop: Notify,
    stopped: AtomicBool,
}

impl Control {
    /// New requests get 503 and readiness fails; the model runs what is
    /// queued without waiting for more.
    fn drain(&self) {
        self.state.draining.store(true, Ordering::SeqCst);
        if let Ok(jobs) = self.state.jobs.lock() {
            if let Some(tx) = jobs.as_ref() {
                let _ = tx.send(batcher::Message::Flush);
            }
        }
    }

    /// Drains, then stops listening once every request in flight is
    /// answered.
    fn shut_down(&self) {
        self.drain();
        self.stopped.store(true, Ordering::SeqCst);
        self.stop.notify_one();
    }
}

/// A running server: its address, and how to stop it.
pub struct Server {
    addr: SocketAddr,
    control: Arc<Control>,
    thread: Option<JoinHandle<Result<(), String>>>,
}

impl Server {
    /// Loads `file`'s model with the options' weights, compiles it at
    /// every batch size it will run, binds the address and starts
    /// answering. With `signals`, SIGTERM and Ctrl-C shut it down.
    pub fn start(file: &Path, options: &ServeOptions, signals: bool) -> Result<Server, Failure> {
        let model::Loaded { model, engine } = model::load(
            file,
            &options.weights,
            options.model.as_deref(),
            options.opt,
        )?;
        let metrics = Arc::new(metrics::Metrics::new(options.max_batch.max(1)));
        let (tx, rx) = mpsc::channel();
        let arriving = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let batching = model::Batching {
            max_batch: options.max_batch.max(1),
            max_delay: options.max_delay,
            arriving: arriving.clone(),
        };
        let state = Arc::new(http::AppState {
            model,
            jobs: Mutex::new(Some(tx)),
            metrics: metrics.clone(),
            draining: AtomicBool::new(false),
            arriving,
            body_limit: options.body_limit,
        });
        let worker = model::start_worker(engine, batching, rx, metrics)?;
        let plain = |m: String| Failure(diagnostic::render_plain(&m));
        let addr = SocketAddr::new(options.host, options.port);
        let listener = TcpListener::bind(addr)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|e| plain(format!("cannot listen on {addr}: {e}")))?;
        let addr = listener
            .local_addr()
            .map_err(|e| plain(format!("cannot listen on {addr}: {e}")))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("nnc-http")
            .enable_all()
            .build()
            .map_err(|e| plain(format!("cannot start the HTTP runtime: {e}")))?;
        let control = Arc::new(Control {
            state: state.clone(),
            stop: Notify::new(),
            stopped: AtomicBool::new(false),
        });
        let thread_control = control.clone();
        let thread = std::thread::Builder::new()
            .name("nnc-serve".into())
            .spawn(move || {
                let served = runtime.block_on(run(listener, state, thread_control, signals));
                // Every request is answered: close the model's queue so
                // its thread ends once it is empty.
                drop(runtime);
                let joined = worker
                    .join()
                    .map_err(|_| "the model's thread panicked".to_string());
                served.and(joined)
            })
            .map_err(|e| plain(format!("cannot start the server's thread: {e}")))?;
        Ok(Server {
            addr,
            control,
            thread: Some(thread),
        })
    }

    /// The address it listens on (the port the system chose for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Begins shutting down without closing the listener: new requests
    /// get 503, readiness fails, and the queued ones run at once.
    pub fn drain(&self) {
        self.control.drain();
    }

    /// Shuts down gracefully: every request in flight is answered, then
    /// the server stops. Returns when it has.
    pub fn shut_down(mut self) -> Result<(), Failure> {
        self.control.shut_down();
        self.wait_inner()
    }

    /// Waits until the server stops (a signal, with `signals`).
    pub fn wait(mut self) -> Result<(), Failure> {
        self.wait_inner()
    }

    fn wait_inner(&mut self) -> Result<(), Failure> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        match thread.join() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Failure(diagnostic::render_plain(&e))),
            Err(_) => Err(Failure(diagnostic::render_plain(
                "the server's thread panicked",
            ))),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.control.shut_down();
            let _ = self.wait_inner();
        }
    }
}

async fn run(
    listener: TcpListener,
    state: Arc<http::AppState>,
    control: Arc<Control>,
    signals: bool,
) -> Result<(), String> {
    let listener =
        tokio::net::TcpListener::from_std(listener).map_err(|e| format!("cannot listen: {e}"))?;
    if signals {
        let control = control.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            control.shut_down();
        });
    }
    let app = http::router(state.clone());
    let stop = control.clone();
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            // `notify_one` stores a permit, so a stop asked before this
            // waits is not lost; the flag covers a wake-up for nothing.
            while !stop.stopped.load(Ordering::SeqCst) {
                stop.stop.notified().await;
            }
        })
        .await
        .map_err(|e| format!("the server stopped: {e}"));
    if let Ok(mut jobs) = state.jobs.lock() {
        jobs.take();
    }
    served
}

/// SIGTERM or Ctrl-C (SIGINT).
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}

/// `nnc serve`: starts the server, says where it listens, and answers
/// until SIGTERM or Ctrl-C, then exits once every request in flight is
/// answered.
pub fn serve(
    file: &Path,
    options: &ServeOptions,
    out: &mut dyn FnMut(&str),
) -> Result<(), Failure> {
    let server = Server::start(file, options, true)?;
    let addr = server.addr();
    let name = server.control.state.model.name.clone();
    out(&format!(
        "serving model `{name}` at http://{addr}/v2/models/{name} (max batch {}, max delay {} ms)",
        options.max_batch.max(1),
        options.max_delay.as_secs_f64() * 1e3
    ));
    server.wait()?;
    out("shut down: every request in flight was answered");
    Ok(())
}

/// `--max-batch`: 1 or more.
pub fn parse_max_batch(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("`{s}` is not a batch size (1 or more)")),
    }
}

/// `--max-delay-ms`: 0 to 60,000 milliseconds.
pub fn parse_delay_ms(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(ms) if ms >= 0.0 && ms.is_finite() && ms <= 60_000.0 => Ok(ms),
        _ => Err(format!("`{s}` is not a delay in milliseconds (0 to 60000)")),
    }
}
