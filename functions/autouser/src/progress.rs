//! A progress bar on stderr for commands that work through many databases, drawn only when
//! stderr is a terminal: piped or redirected, they print nothing extra.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;

use indicatif::{ProgressBar, ProgressStyle};

/// The bar being drawn, if any: log lines are written around it ([`StderrAroundBar`]).
static DRAWN: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// Standard error for the log: each write clears the bar, writes, and draws the bar again, so
/// that log lines never land in the middle of it.
pub struct StderrAroundBar;

impl Write for StderrAroundBar {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let drawn = DRAWN.lock().map(|bar| bar.clone()).unwrap_or(None);
        match drawn {
            Some(bar) => bar.suspend(|| std::io::stderr().write(buf)),
            None => std::io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    /// A bar over `total` databases, labelled `verb` ("reading", "reaping"). Hidden when
    /// stderr is not a terminal, and for a single database.
    pub fn new(total: usize, verb: &str) -> Progress {
        if total < 2 || !std::io::stderr().is_terminal() {
            return Progress { bar: ProgressBar::hidden() };
        }
        let bar = ProgressBar::new(total as u64);
        let style = ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} databases {msg}")
            .expect("a valid template")
            .progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix(verb.to_string());
        if let Ok(mut drawn) = DRAWN.lock() {
            *drawn = Some(bar.clone());
        }
        Progress { bar }
    }

    /// A bar whose length comes later, through [`Progress::set`] (discovery learns how many
    /// databases there are once the regions are listed). Hidden when stderr is not a terminal.
    pub fn unsized_until_known(verb: &str) -> Progress {
        let progress = Progress::new(2, verb);
        progress.bar.set_length(0);
        progress
    }

    /// `done` of `total` databases; hidden again when `total` turns out below two.
    pub fn set(&self, done: usize, total: usize) {
        if total < 2 {
            self.bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        self.bar.set_length(total as u64);
        self.bar.set_position(done as u64);
    }

    pub fn working_on(&self, database: &str) {
        self.bar.set_message(database.to_string());
    }

    pub fn done_one(&self) {
        self.bar.inc(1);
    }

    /// Removes the bar, so that what the command prints next starts on a clean line.
    pub fn finish(&self) {
        if let Ok(mut drawn) = DRAWN.lock() {
            *drawn = None;
        }
        self.bar.finish_and_clear();
    }
}
