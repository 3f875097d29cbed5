//! Command-line pieces both bench commands (`bench`, `move-bench`) share: the
//! report format, duration arguments and the stderr log setup.

use std::io::IsTerminal;
use std::time::Duration;

use clap::ValueEnum;

/// How a bench prints its report on stdout.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Output {
    /// A table for people.
    Table,
    /// One JSON object for scripts, with the same figures.
    Json,
}

impl Output {
    /// Prints the report in this format on stdout.
    pub fn print(self, table: impl FnOnce() -> String, json: impl FnOnce() -> String) {
        match self {
            Output::Table => print!("{}", table()),
            Output::Json => println!("{}", json()),
        }
    }
}

/// Parses `250ms`, `20s`, `2m` or a bare number of seconds (a clap value parser).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("`{s}` is not a duration such as 20s or 500ms"))?;
    let secs = match unit.trim() {
        "" | "s" => n,
        "ms" => n / 1e3,
        "m" | "min" => n * 60.0,
        other => return Err(format!("unknown duration unit `{other}` (use ms, s or m)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("`{s}`: {e}"))
}

/// Logs to stderr, warnings only by default: openraft warns about every unanswered
/// message, which floods the progress lines under load and at shutdown, so its
/// warnings are off unless `RUST_LOG` brings them back.
pub fn init_tracing() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,openraft=error")),
        )
        .init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("20s"), Ok(Duration::from_secs(20)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("3h").is_err());
        assert!(parse_duration("s").is_err());
    }
}
