//! Who may call the `/v1` API: `Authorization: Bearer TOKEN`, looked up in the binary port's
//! own token table with the binary port's own function
//! ([`role_of_token`](crate::server::role_of_token)), and the role checked against the
//! opcode the binary port would run for the same thing ([`Role::may`]): reads need a role
//! that may `GET_SKU`, the event stream one that may `SUBSCRIBE` (adapter, admin).
//!
//! Without tokens every client is admin on a loopback listen address, as on the binary port
//! (which refuses to start without tokens anywhere else). The HTTP endpoint may still be
//! bound elsewhere without tokens, for scrapers and probes: then the API refuses every
//! request, since nothing would tell its clients apart.

use axum::http::{header, HeaderMap, StatusCode};

use crate::protocol::Role;

use super::api::ApiError;
use super::AppState;

/// Largest `Authorization` value looked at (a token is at most 256 bytes).
const MAX_AUTHORIZATION_BYTES: usize = 512;

/// The caller's role, if it may run `opcode`.
pub(crate) fn authorize(
    state: &AppState,
    headers: &HeaderMap,
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
    let token = bearer(headers);
    let role = if tokens.is_empty() {
        crate::server::role_of_token(tokens, "")
    } else {
        token.and_then(|t| crate::server::role_of_token(tokens, t))
    };
    let Some(role) = role else {
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
