//! Training progress on the terminal: while an epoch runs, a bar with the
//! batches done, samples per second and the time left; when it ends the bar
//! gives way to the epoch's summary line. Not on a terminal (a log file, a
//! pipe) there is no bar, only the summary lines.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::time::Instant;

/// Whether stdout is a terminal, i.e. whether a bar should be drawn.
pub fn stdout_is_terminal() -> bool {
    std::io::stdout().is_terminal()
}

/// One bar per epoch, driven by the training loop's `on_batch(done, total)`
/// callback.
pub struct Progress {
    enabled: bool,
    target: fn() -> ProgressDrawTarget,
    batch_size: usize,
    epoch: usize,
    epochs: usize,
    bar: Option<(ProgressBar, Instant)>,
}

impl Progress {
    /// A progress display for epochs `first_epoch..=epochs` with batches of
    /// `batch_size` samples; `enabled` is false off a terminal, and then
    /// nothing is drawn.
    pub fn new(enabled: bool, batch_size: usize, first_epoch: usize, epochs: usize) -> Progress {
        Progress {
            enabled,
            target: ProgressDrawTarget::stdout,
            batch_size,
            epoch: first_epoch,
            epochs,
            bar: None,
        }
    }

    /// The same, drawing nowhere: for tests.
    pub fn hidden(batch_size: usize, first_epoch: usize, epochs: usize) -> Progress {
        Progress {
            target: ProgressDrawTarget::hidden,
            ..Progress::new(true, batch_size, first_epoch, epochs)
        }
    }

    /// After step `done` of `total` in the current epoch. (The samples per
    /// second assume full batches; the epoch's summary line has the exact
    /// rate.)
    pub fn batch(&mut self, done: usize, total: usize) {
        if !self.enabled {
            return;
        }
        let (bar, start) = self.bar.get_or_insert_with(|| {
            let bar = ProgressBar::with_draw_target(Some(total as u64), (self.target)());
            if let Ok(style) = ProgressStyle::with_template(
                "{prefix} [{wide_bar}] {pos}/{len} batches  {msg}  ETA {eta}",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_prefix(format!("epoch {}/{}", self.epoch, self.epochs));
            (bar, Instant::now())
        });
        bar.set_length(total as u64);
        bar.set_position(done as u64);
        // The clock starts when the first step has finished, so the rate
        // counts the steps after it.
        let seconds = start.elapsed().as_secs_f64();
        if done > 1 && seconds > 0.0 {
            let rate = ((done - 1) * self.batch_size) as f64 / seconds;
            bar.set_message(format!("{rate:.0} samples/s"));
        }
    }

    /// Ends the current epoch's bar (clearing it, so the caller's summary
    /// line takes its place).
    pub fn finish_epoch(&mut self) {
        if let Some((bar, _)) = self.bar.take() {
            bar.finish_and_clear();
        }
        self.epoch += 1;
    }

    /// The current bar's `(prefix, position, length, message)`, if one is
    /// shown.
    pub fn state(&self) -> Option<(String, u64, Option<u64>, String)> {
        self.bar
            .as_ref()
            .map(|(b, _)| (b.prefix(), b.position(), b.length(), b.message()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_bar_per_epoch_numbered_from_the_first_epoch() {
        let mut p = Progress::hidden(32, 3, 5);
        p.batch(1, 4);
        let (prefix, pos, len, _) = p.state().unwrap();
        assert_eq!((prefix.as_str(), pos, len), ("epoch 3/5", 1, Some(4)));
        p.batch(4, 4);
        assert_eq!(p.state().unwrap().1, 4);
        p.finish_epoch();
        assert!(p.state().is_none());
        p.batch(1, 4);
        assert_eq!(p.state().unwrap().0, "epoch 4/5");
    }

    #[test]
    fn disabled_draws_nothing() {
        let mut p = Progress::new(false, 32, 1, 1);
        p.batch(1, 2);
        assert!(p.state().is_none());
        p.finish_epoch();
    }
}
