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
}

/// `Result` with [`BenchError`] as the error type.
pub type BenchResult<T> = Result<T, BenchError>;

impl BenchError {
    /// An error carrying just this message.
    pub fn msg(message: impl fmt::Display) -> Self {
        Self {
            message: message.to_string(),
        }
    }

    /// Prefixes the message with what was being done, e.g. `"quinn-stream server: ..."`.
    #[must_use]
    pub fn context(self, what: impl fmt::Display) -> Self {
        Self {
            message: format!("{what}: {}", self.message),
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
        Self { message }
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
    }
}
