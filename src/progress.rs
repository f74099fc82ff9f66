//! Renders the solver's progress events: `plain` prints buildx-like `#N` lines, `tty` keeps a live view of the
//! running steps with timers, `quiet` prints nothing.

use clap::ValueEnum;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use kiln_solver::progress::{Event, Stream};
use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedReceiver;

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProgressMode {
    /// tty when stderr is a terminal, else plain
    #[default]
    Auto,
    Tty,
    Plain,
    Quiet,
}

impl ProgressMode {
    fn resolve(self) -> ProgressMode {
        match self {
            ProgressMode::Auto if std::io::stderr().is_terminal() => ProgressMode::Tty,
            ProgressMode::Auto => ProgressMode::Plain,
            other => other,
        }
    }
}

/// What the build's summary line reports.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tally {
    pub steps: usize,
    pub cached: usize,
}

/// Consumes events until the solver drops its sender; returns the tally for the summary line.
pub async fn render(mode: ProgressMode, mut events: UnboundedReceiver<Event>) -> Tally {
    let mut tally = Tally::default();
    match mode.resolve() {
        ProgressMode::Quiet => {
            while let Some(event) = events.recv().await {
                count(&mut tally, &event);
            }
        }
        ProgressMode::Plain | ProgressMode::Auto => {
            let mut plain = Plain::default();
            while let Some(event) = events.recv().await {
                count(&mut tally, &event);
                plain.handle(event);
            }
            plain.flush_all();
        }
        ProgressMode::Tty => {
            let mut tty = Tty::new();
            while let Some(event) = events.recv().await {
                count(&mut tally, &event);
                tty.handle(event);
            }
        }
    }
    tally
}

fn count(tally: &mut Tally, event: &Event) {
    match event {
        Event::Started { .. } => tally.steps += 1,
        Event::Cached { .. } => {
            tally.steps += 1;
            tally.cached += 1;
        }
        _ => {}
    }
}

/// `#5 [build 2/3] RUN make` / `#5 0.412 output` / `#5 DONE 1.2s`, like `docker buildx build --progress=plain`.
#[derive(Default)]
struct Plain {
    started: HashMap<usize, Instant>,
    /// Output not yet ending in a newline, per step, so lines are never split between two prints.
    partial: HashMap<usize, Vec<u8>>,
}

impl Plain {
    fn handle(&mut self, event: Event) {
        let mut err = std::io::stderr().lock();
        let _ = match event {
            Event::Started { id, name } => {
                self.started.insert(id, Instant::now());
                writeln!(err, "#{id} {name}")
            }
            Event::Cached { id, name } => writeln!(err, "#{id} {name}\n#{id} CACHED"),
            Event::Log { id, data, stream: _ } => {
                let at = self.started.get(&id).map_or(0.0, |t| t.elapsed().as_secs_f64());
                let buffer = self.partial.entry(id).or_default();
                buffer.extend_from_slice(&data);
                while let Some(end) = buffer.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = buffer.drain(..=end).collect();
                    let _ = writeln!(
                        err,
                        "#{id} {at:.3} {}",
                        String::from_utf8_lossy(&line[..line.len() - 1])
                    );
                }
                Ok(())
            }
            Event::Done { id, duration } => {
                self.flush(id);
                writeln!(err, "#{id} DONE {:.1}s", duration.as_secs_f64())
            }
            Event::Failed { id, duration, error } => {
                self.flush(id);
                writeln!(err, "#{id} ERROR: {error} ({:.1}s)", duration.as_secs_f64())
            }
            Event::Cancelled { id, duration } => {
                self.flush(id);
                writeln!(err, "#{id} CANCELED {:.1}s", duration.as_secs_f64())
            }
        };
    }

    fn flush(&mut self, id: usize) {
        if let Some(rest) = self.partial.remove(&id).filter(|r| !r.is_empty()) {
            let at = self.started.get(&id).map_or(0.0, |t| t.elapsed().as_secs_f64());
            let _ = writeln!(
                std::io::stderr(),
                "#{id} {at:.3} {}",
                String::from_utf8_lossy(&rest)
            );
        }
    }

    fn flush_all(&mut self) {
        let ids: Vec<usize> = self.partial.keys().copied().collect();
        for id in ids {
            self.flush(id);
        }
    }
}

/// A live view: one spinner line per running step with its elapsed time and last output line; finished steps
/// stay as `=> [..] DONE 1.2s` lines above.
struct Tty {
    bars: MultiProgress,
    running: HashMap<usize, (ProgressBar, String)>,
}

impl Tty {
    fn new() -> Self {
        Tty {
            bars: MultiProgress::new(),
            running: HashMap::new(),
        }
    }

    fn style() -> ProgressStyle {
        ProgressStyle::with_template("{spinner} {prefix} {elapsed:>4} {wide_msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner())
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Started { id, name } => {
                let bar = self.bars.add(ProgressBar::new_spinner());
                bar.set_style(Self::style());
                bar.set_prefix(format!("=> {name}"));
                bar.enable_steady_tick(Duration::from_millis(100));
                self.running.insert(id, (bar, name));
            }
            Event::Cached { name, .. } => {
                let _ = self.bars.println(format!("=> CACHED {name}"));
            }
            Event::Log { id, data, stream } => {
                if let Some((bar, _)) = self.running.get(&id) {
                    let text = String::from_utf8_lossy(&data);
                    if let Some(line) = text.lines().rev().find(|l| !l.trim().is_empty()) {
                        let marker = if stream == Stream::Stderr { "! " } else { "" };
                        bar.set_message(format!("{marker}{}", line.trim()));
                    }
                }
            }
            Event::Done { id, duration } => {
                if let Some((bar, name)) = self.running.remove(&id) {
                    bar.finish_and_clear();
                    let _ = self
                        .bars
                        .println(format!("=> {name} {:.1}s", duration.as_secs_f64()));
                }
            }
            Event::Failed { id, duration, error } => {
                if let Some((bar, name)) = self.running.remove(&id) {
                    bar.finish_and_clear();
                    let _ = self
                        .bars
                        .println(format!("=> ERROR {name} {:.1}s: {error}", duration.as_secs_f64()));
                }
            }
            Event::Cancelled { id, duration } => {
                if let Some((bar, name)) = self.running.remove(&id) {
                    bar.finish_and_clear();
                    let _ = self
                        .bars
                        .println(format!("=> CANCELED {name} {:.1}s", duration.as_secs_f64()));
                }
            }
        }
    }
}
