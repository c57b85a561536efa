//! The optional shared secret every connection must present first.
//!
//! When a token is configured, the first request on a connection must be
//! AUTH with that token (see [`super::KvService`]'s admission). Tokens are
//! compared in constant time and never logged or echoed.

use std::io;
use std::path::Path;

use ramkv_proto::{Response, Status};
use subtle::ConstantTimeEq;

use super::error_response;

/// The server's token, if authentication is on.
#[derive(Default)]
pub(super) struct Authenticator {
    token: Option<Box<[u8]>>,
}

impl Authenticator {
    /// No authentication.
    pub(super) fn open() -> Self {
        Authenticator { token: None }
    }

    /// Authentication with `token`.
    pub(super) fn with_token(token: &[u8]) -> Self {
        Authenticator {
            token: Some(token.into()),
        }
    }

    /// Reads the token from a file; surrounding whitespace is ignored. The
    /// error names the file, never its contents.
    pub(super) fn from_file(path: &Path) -> io::Result<Self> {
        let raw = std::fs::read(path)?;
        let token = raw.trim_ascii();
        if token.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} holds no token", path.display()),
            ));
        }
        Ok(Self::with_token(token))
    }

    /// True when connections start unauthenticated.
    pub(super) fn required(&self) -> bool {
        self.token.is_some()
    }

    /// Whether `presented` is the token (any token, when none is required).
    pub(super) fn check(&self, presented: &[u8]) -> bool {
        match &self.token {
            // Length is not secret-dependent in a way worth hiding; content is.
            Some(t) => t.len() == presented.len() && bool::from(t.as_ref().ct_eq(presented)),
            None => true,
        }
    }
}

/// The answer to anything but AUTH on a connection that has not authenticated.
pub(super) fn refusal(id: u64) -> Response {
    error_response(
        id,
        Status::Unauthenticated,
        "authentication required: the first request must be AUTH with the server's token",
    )
}

/// The answer to AUTH with the wrong token.
pub(super) fn wrong_token(id: u64) -> Response {
    error_response(id, Status::Unauthenticated, "wrong authentication token")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_right_token_passes_and_messages_never_contain_it() {
        let a = Authenticator::with_token(b"s3cret");
        assert!(a.required());
        assert!(a.check(b"s3cret"));
        assert!(!a.check(b"s3cre") && !a.check(b"s3cret!") && !a.check(b""));
        assert!(Authenticator::open().check(b"anything"));
        for r in [refusal(1), wrong_token(1)] {
            assert!(!r.message.contains("s3cret"));
        }
    }
}
