//! Optional shared-secret authentication, checked per connection before any
//! request reaches an executor.
//!
//! When a token is configured, the first request on a connection must be
//! AUTH with that token. Anything else, or a wrong token, is answered with
//! UNAUTHENTICATED and the connection is closed. Tokens are compared in
//! constant time and never logged or echoed.

use std::io;
use std::path::Path;

use subtle::ConstantTimeEq;

use crate::wire::pb::request::Op;
use crate::wire::{Request, Response, Status, error_response};

/// The server's token, if authentication is on.
#[derive(Default)]
pub struct Authenticator {
    token: Option<Box<[u8]>>,
}

/// What to do with a request on a connection that may not be authenticated yet.
pub enum Gate {
    /// Hand the request on.
    Pass(Request),
    /// Answer with this and carry on (a successful AUTH).
    Reply(Response),
    /// Answer with this, then close the connection.
    ReplyAndClose(Response),
}

impl Authenticator {
    /// No authentication.
    pub fn open() -> Self {
        Authenticator { token: None }
    }

    /// Authentication with `token`.
    pub fn with_token(token: &[u8]) -> Self {
        Authenticator {
            token: Some(token.into()),
        }
    }

    /// Reads the token from a file; surrounding whitespace is ignored. The
    /// error names the file, never its contents.
    pub fn from_file(path: &Path) -> io::Result<Self> {
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
    pub fn required(&self) -> bool {
        self.token.is_some()
    }

    fn matches(&self, presented: &[u8]) -> bool {
        match &self.token {
            // Length is not secret-dependent in a way worth hiding; content is.
            Some(t) => t.len() == presented.len() && bool::from(t.as_ref().ct_eq(presented)),
            None => true,
        }
    }

    /// Decides what happens to `req` on a connection whose state is `authed`.
    pub fn gate(&self, authed: &mut bool, req: Request) -> Gate {
        match &req.op {
            Some(Op::Auth(a)) => {
                if self.matches(&a.token) {
                    *authed = true;
                    Gate::Reply(Response {
                        id: req.id,
                        status: Status::Ok as i32,
                        message: String::new(),
                        result: None,
                    })
                } else {
                    *authed = false;
                    Gate::ReplyAndClose(error_response(
                        req.id,
                        Status::Unauthenticated,
                        "wrong authentication token",
                    ))
                }
            }
            _ if *authed || !self.required() => Gate::Pass(req),
            _ => Gate::ReplyAndClose(error_response(
                req.id,
                Status::Unauthenticated,
                "authentication required: the first request must be AUTH with the server's token",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::pb;

    fn auth(token: &[u8]) -> Request {
        Request {
            id: 1,
            op: Some(Op::Auth(pb::Auth {
                token: token.to_vec().into(),
            })),
        }
    }

    #[test]
    fn only_the_right_token_opens_the_gate() {
        let a = Authenticator::with_token(b"s3cret");
        let ping = || Request {
            id: 2,
            op: Some(Op::Ping(pb::Ping::default())),
        };
        let mut authed = false;
        assert!(
            matches!(a.gate(&mut authed, ping()), Gate::ReplyAndClose(r) if r.status == Status::Unauthenticated as i32)
        );
        assert!(matches!(
            a.gate(&mut authed, auth(b"s3cre")),
            Gate::ReplyAndClose(_)
        ));
        assert!(matches!(a.gate(&mut authed, auth(b"s3cret")), Gate::Reply(r) if r.status == 0));
        assert!(authed);
        assert!(matches!(a.gate(&mut authed, ping()), Gate::Pass(_)));
        let mut anyone = false;
        assert!(matches!(
            Authenticator::open().gate(&mut anyone, ping()),
            Gate::Pass(_)
        ));
    }

    #[test]
    fn messages_never_contain_the_token() {
        let a = Authenticator::with_token(b"s3cret");
        let mut authed = false;
        if let Gate::ReplyAndClose(r) = a.gate(&mut authed, auth(b"guess")) {
            assert!(!r.message.contains("s3cret") && !r.message.contains("guess"));
        }
    }
}
