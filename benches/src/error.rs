//! The harness's error type: a message, convertible from any standard error with `?`.

use std::fmt;

/// An error from a scenario or from the harness around it.
///
/// Any `std::error::Error` converts into it with `?` (like `anyhow::Error`, without the
/// dependency), so a scenario can mix quinn, rustls, rcgen, I/O and Shoal errors freely.
/// It deliberately does *not* implement `std::error::Error` itself: that is what makes the
/// blanket `From` impl coherent.
pub struct BenchError {
    message: String,
    /// Set by [`BenchError::skipped`]: the scenario could not run here (e.g. it needs root),
    /// which is reported but does not fail the whole benchmark run.
    skipped: bool,
}

/// `Result` with [`BenchError`] as the error type.
pub type BenchResult<T> = Result<T, BenchError>;

impl BenchError {
    /// An error carrying just this message.
    pub fn msg(message: impl fmt::Display) -> Self {
        Self {
            message: message.to_string(),
            skipped: false,
        }
    }

    /// A scenario that cannot run on this machine, said why (e.g. `"needs root to create
    /// network namespaces"`). `shoal-bench` prints it as SKIPPED and, unlike any other error,
    /// it does not make the run's exit status a failure.
    pub fn skipped(message: impl fmt::Display) -> Self {
        Self {
            message: message.to_string(),
            skipped: true,
        }
    }

    /// Whether this error means "could not run here" rather than "failed"
    /// (see [`BenchError::skipped`]).
    pub fn is_skipped(&self) -> bool {
        self.skipped
    }

    /// Prefixes the message with what was being done, e.g. `"quinn-stream server: ..."`.
    #[must_use]
    pub fn context(self, what: impl fmt::Display) -> Self {
        Self {
            message: format!("{what}: {}", self.message),
            skipped: self.skipped,
        }
    }

    /// The full message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl<E: std::error::Error> From<E> for BenchError {
    fn from(error: E) -> Self {
        // Keep the chain of causes: most transport errors wrap a more useful one.
        let mut message = error.to_string();
        let mut source = error.source();
        let mut depth = 0;
        while let Some(cause) = source {
            if depth >= 8 {
                break;
            }
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
            depth += 1;
        }
        Self {
            message,
            skipped: false,
        }
    }
}

impl fmt::Display for BenchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Debug for BenchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_std_errors_and_adds_context() {
        let io = std::io::Error::other("boom");
        let err = BenchError::from(io).context("udp-echo server");
        assert_eq!(err.message(), "udp-echo server: boom");
        assert!(!err.is_skipped());
        let skip = BenchError::skipped("needs root").context("run 1");
        assert!(skip.is_skipped());
        assert_eq!(skip.message(), "run 1: needs root");
    }
}
