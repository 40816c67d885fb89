//! Who may call the `/v1` API: `Authorization: Bearer TOKEN`, looked up in the binary port's
//! own token table with the binary port's own function
//! ([`role_of_token`](crate::server::role_of_token)), and the role checked against the
//! opcode the binary port would run for the same thing ([`Role::may`]): reads need a role
//! that may `GET_SKU`, the event stream one that may `SUBSCRIBE` (adapter, admin).
//!
//! A source that fails 20 times in 60 s (missing or unknown token) is refused unchecked for
//! the rest of the window (429 `auth_throttled`), as a source that fails the binary port's
//! handshake that often is; each port keeps its own table (`server::AuthThrottle`).
//!
//! Without tokens every client is admin on a loopback listen address, as on the binary port
//! (which refuses to start without tokens anywhere else). The HTTP endpoint may still be
//! bound elsewhere without tokens, for scrapers and probes: then the API refuses every
//! request, since nothing would tell its clients apart.

use std::net::IpAddr;

use axum::http::{header, HeaderMap, StatusCode};

use crate::metrics::HTTP_AUTH_FAILURES_TOTAL;
use crate::protocol::Role;
use crate::server::{AUTH_FAILURES_PER_SOURCE, AUTH_FAILURE_WINDOW};

use super::api::ApiError;
use super::AppState;

/// Largest `Authorization` value looked at (a token is at most 256 bytes).
const MAX_AUTHORIZATION_BYTES: usize = 512;

/// The caller's role, if it may run `opcode`.
pub(crate) fn authorize(
    state: &AppState,
    headers: &HeaderMap,
    peer: IpAddr,
    opcode: u16,
) -> Result<Role, ApiError> {
    let tokens = &state.config.tokens;
    if tokens.is_empty() && !state.loopback {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "tokens_required",
            "no auth token is configured and this endpoint is not on loopback: the API is off",
        ));
    }
    if !tokens.is_empty() {
        if let Some(left) = state.auth_throttle.blocked(peer) {
            ::metrics::counter!(HTTP_AUTH_FAILURES_TOTAL).increment(1);
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "auth_throttled",
                format!(
                    "too many failed authentications from {peer}: at most \
                     {AUTH_FAILURES_PER_SOURCE} per {} s; retry in {} s",
                    AUTH_FAILURE_WINDOW.as_secs(),
                    left.as_secs() + 1
                ),
            )
            .with_retry_after(left.as_secs() + 1));
        }
    }
    let token = bearer(headers);
    let role = if tokens.is_empty() {
        crate::server::role_of_token(tokens, "")
    } else {
        token.and_then(|t| crate::server::role_of_token(tokens, t))
    };
    let Some(role) = role else {
        state.auth_throttle.failed(peer);
        ::metrics::counter!(HTTP_AUTH_FAILURES_TOTAL).increment(1);
        let message = if token.is_some() {
            "unknown token"
        } else {
            "missing credentials: send Authorization: Bearer TOKEN"
        };
        return Err(
            ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
                .with_header(header::WWW_AUTHENTICATE, "Bearer"),
        );
    };
    if !role.may(opcode) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("role {} may not do this", role_name(role)),
        ));
    }
    Ok(role)
}

fn role_name(r: Role) -> &'static str {
    match r {
        Role::Checkout => "checkout",
        Role::Adapter => "adapter",
        Role::Admin => "admin",
    }
}

/// The token of an `Authorization: Bearer TOKEN` header (scheme case-insensitive).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    if v.len() > MAX_AUTHORIZATION_BYTES {
        return None;
    }
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, v.parse().unwrap());
        h
    }

    #[test]
    fn bearer_tokens_are_read_and_other_schemes_are_not() {
        assert_eq!(bearer(&headers("Bearer abc")), Some("abc"));
        assert_eq!(bearer(&headers("bearer  abc ")), Some("abc"));
        assert_eq!(bearer(&headers("Basic abc")), None);
        assert_eq!(bearer(&headers("Bearer ")), None);
        assert_eq!(bearer(&headers("Bearerabc")), None);
        assert_eq!(bearer(&HeaderMap::new()), None);
        assert_eq!(
            bearer(&headers(&format!("Bearer {}", "x".repeat(600)))),
            None
        );
    }
}
