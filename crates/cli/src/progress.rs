//! Progress of long operator commands (backfill, replay): a bar redrawn in place on a
//! terminal, plain lines (at most one every few seconds, and one per phase) otherwise, so
//! logs stay readable.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// How often plain progress lines are written when stderr is not a terminal.
const PLAIN_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub struct Progress {
    started: Instant,
    terminal: bool,
    last_line: Option<Instant>,
    phase: String,
    phase_started: Instant,
}

/// One reading of a running operation.
#[derive(Debug)]
pub struct Reading<'a> {
    pub phase: &'a str,
    /// What `count` counts ("objects", "events").
    pub unit: &'a str,
    pub count: u64,
    /// Of the current phase, when its size is known: drives the bar and the ETA.
    pub phase_done: u64,
    pub phase_total: Option<u64>,
    /// Extra figures, shown as they are ("1,204 requests").
    pub extra: String,
}

impl Progress {
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            terminal: std::io::stderr().is_terminal(),
            last_line: None,
            phase: String::new(),
            phase_started: Instant::now(),
        }
    }

    pub fn update(&mut self, reading: &Reading<'_>) {
        let new_phase = self.phase != reading.phase;
        if new_phase {
            self.phase_started = Instant::now();
        }
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = count_f64(reading.count) / secs;
        let mut line = format!(
            "{:<22} {} {} · {:.0}/s",
            reading.phase,
            thousands(reading.count),
            reading.unit,
            rate,
        );
        if !reading.extra.is_empty() {
            line = format!("{line} · {}", reading.extra);
        }
        if let Some(total) = reading.phase_total.filter(|t| *t > 0) {
            let done = reading.phase_done.min(total);
            let fraction = count_f64(done) / count_f64(total);
            let phase_secs = self.phase_started.elapsed().as_secs_f64().max(0.001);
            let phase_rate = count_f64(done) / phase_secs;
            let eta = if phase_rate > 0.0 {
                format_duration(Duration::from_secs_f64(
                    count_f64(total - done) / phase_rate,
                ))
            } else {
                "?".to_owned()
            };
            line = format!("{line} · {} {done}/{total} · ETA {eta}", bar(fraction));
        }
        if self.terminal {
            let mut err = std::io::stderr().lock();
            if new_phase && !self.phase.is_empty() {
                let _ = writeln!(err);
            }
            let _ = write!(err, "\r\x1b[2K{line}");
            let _ = err.flush();
        } else if new_phase || self.last_line.is_none_or(|t| t.elapsed() >= PLAIN_EVERY) {
            eprintln!("{line}");
            self.last_line = Some(Instant::now());
        }
        if new_phase {
            reading.phase.clone_into(&mut self.phase);
        }
    }

    /// Ends the bar's line on a terminal.
    pub fn finish(&self) {
        if self.terminal && !self.phase.is_empty() {
            eprintln!();
        }
    }
}

fn count_f64(n: u64) -> f64 {
    // Counts stay far below 2^52; saturate rather than cast.
    f64::from(u32::try_from(n).unwrap_or(u32::MAX))
}

fn bar(fraction: f64) -> String {
    const WIDTH: usize = 20;
    let filled = (0..WIDTH)
        .take_while(|i| {
            let step = f64::from(u32::try_from(*i).unwrap_or(0) + 1) / 20.0;
            step <= fraction + f64::EPSILON
        })
        .count();
    format!("[{}{}]", "#".repeat(filled), "-".repeat(WIDTH - filled))
}

pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs >= 3600 {
        format!("{}:{:02}:{:02}", secs / 3600, secs % 3600 / 60, secs % 60)
    } else {
        format!("{}:{:02}", secs / 60, secs % 60)
    }
}

/// 1234567 -> "1,234,567".
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_read_as_people_write_them() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(format_duration(Duration::from_secs(75)), "1:15");
        assert_eq!(format_duration(Duration::from_secs(3725)), "1:02:05");
        assert_eq!(bar(0.0), format!("[{}]", "-".repeat(20)));
        assert_eq!(bar(0.5), format!("[{}{}]", "#".repeat(10), "-".repeat(10)));
        assert_eq!(bar(1.0), format!("[{}]", "#".repeat(20)));
    }
}
