//! How `ctl` fails: one [`Failure`] per way, each with a stable name, an exit code and (under
//! `--json`) an error object. Client-side failures take the sysexits band 64..=78, which no
//! status code uses, so a script can tell "the server said no" from "no server answered".
//!
//! | exit | meaning |
//! |---|---|
//! | 0 | ok |
//! | 1..=63 | the server's rejection with that status code (today 1..=17, 19..=22) |
//! | 64 | usage: bad flags or argument values (`usage`) |
//! | 65 | `rebalance apply ID`: that recommendation is not the SKU's current one (`recommendation_not_found`: the SKU changed since it was listed, or it was applied already) |
//! | 69 | no connection: refused, unreachable, unknown host (`unavailable`) |
//! | 70 | a bug in ctl itself (`client_internal`) |
//! | 75 | timeout or connection lost mid-request; retry with the same `--request-id` (`timeout`, `disconnected`) |
//! | 76 | the peer does not speak the omnistock protocol (`not_omnistock`, `bad_response`), or the TLS handshake failed (`tls`: a plaintext server, an unknown CA, a name mismatch, a refused client certificate) |
//! | 1, 3, 4, 5 | `check --addr` only: the backup was written and `check` found it unsound, with `check DIR`'s exit code (`check_failed`) |
//! | 99 | a status with no exit code of its own (a rejection code 64..=99 or an error above 125; none is defined today) |
//! | 100..=125 | the server's error with that status code (today 100..=112) |

use omnistock::client::ClientError;
use omnistock::protocol::{self, status, CompareFacts, InUseFacts, InsufficientFacts};
use serde_json::{json, Value};

use super::ids::fmt_id;

/// EX_USAGE.
pub const USAGE: u8 = 64;
/// EX_DATAERR: the data the command names (a rebalance recommendation) is not current.
pub const STALE: u8 = 65;
/// EX_UNAVAILABLE.
pub const UNAVAILABLE: u8 = 69;
/// EX_SOFTWARE.
pub const INTERNAL: u8 = 70;
/// EX_TEMPFAIL.
pub const TEMPFAIL: u8 = 75;
/// EX_PROTOCOL.
pub const PROTOCOL: u8 = 76;
/// A status code that has no exit code of its own.
pub const OTHER_STATUS: u8 = 99;

/// What went wrong, by who.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// The server answered with a non-zero status (`details`: the rejection's facts).
    Server { status: u16, details: Option<Value> },
    /// Bad command line.
    Usage,
    /// What the command names no longer exists (a rebalance recommendation superseded).
    Stale,
    /// Could not connect.
    Unavailable,
    /// No answer in time.
    Timeout,
    /// The connection dropped before the answer.
    Disconnected,
    /// The peer is not an omnistock server.
    NotOmnistock,
    /// The server's bytes did not make sense after a good handshake.
    BadResponse,
    /// The TLS handshake failed.
    Tls,
    /// ctl's own bug.
    Internal,
    /// `check --addr`: the backup was written but `check` found it unsound; the exit code
    /// is `check DIR`'s (1 corrupt, 3, 4, 5; see src/tools.rs).
    Check(u8),
}

/// A failed `ctl` command.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub kind: Kind,
    pub message: String,
    /// The request id of the failed mutating command: retry with `--request-id` it.
    pub request_id: Option<u128>,
}

impl Failure {
    pub fn new(kind: Kind, message: impl Into<String>) -> Failure {
        Failure {
            kind,
            message: message.into(),
            request_id: None,
        }
    }

    pub fn usage(message: impl Into<String>) -> Failure {
        Failure::new(Kind::Usage, message)
    }

    pub fn internal(message: impl Into<String>) -> Failure {
        Failure::new(Kind::Internal, message)
    }

    /// Attaches the request id of a mutating command.
    pub fn with_request_id(mut self, id: u128) -> Failure {
        self.request_id = Some(id);
        self
    }

    /// The stable name: the status's name for a server answer, else the client-side name.
    pub fn name(&self) -> &'static str {
        match &self.kind {
            Kind::Server { status, .. } => status::name(*status),
            Kind::Usage => "usage",
            Kind::Stale => "recommendation_not_found",
            Kind::Unavailable => "unavailable",
            Kind::Timeout => "timeout",
            Kind::Disconnected => "disconnected",
            Kind::NotOmnistock => "not_omnistock",
            Kind::BadResponse => "bad_response",
            Kind::Tls => "tls",
            Kind::Internal => "client_internal",
            Kind::Check(_) => "check_failed",
        }
    }

    /// Whether the same command (same request id) may succeed later unchanged.
    pub fn retriable(&self) -> bool {
        match &self.kind {
            Kind::Server { status, .. } => status::is_retriable(*status),
            Kind::Unavailable | Kind::Timeout | Kind::Disconnected => true,
            Kind::Usage
            | Kind::Stale
            | Kind::NotOmnistock
            | Kind::BadResponse
            | Kind::Internal
            | Kind::Tls
            | Kind::Check(_) => false,
        }
    }

    /// The process exit code (the table at the top of this file).
    pub fn exit_code(&self) -> u8 {
        match &self.kind {
            Kind::Server { status, .. } => status_exit_code(*status),
            Kind::Usage => USAGE,
            Kind::Stale => STALE,
            Kind::Unavailable => UNAVAILABLE,
            Kind::Timeout | Kind::Disconnected => TEMPFAIL,
            Kind::NotOmnistock | Kind::BadResponse | Kind::Tls => PROTOCOL,
            Kind::Internal => INTERNAL,
            Kind::Check(code) => *code,
        }
    }

    /// `{"error": {"status", "name", "message", "retriable"[, "details"][, "request_id"]}}`;
    /// `status` is null for a client-side failure.
    pub fn to_json(&self) -> Value {
        let (status, details) = match &self.kind {
            Kind::Server { status, details } => (json!(status), details.clone()),
            _ => (Value::Null, None),
        };
        let mut e = json!({
            "status": status,
            "name": self.name(),
            "message": self.message,
            "retriable": self.retriable(),
        });
        if let Some(d) = details {
            e["details"] = d;
        }
        if let Some(id) = self.request_id {
            e["request_id"] = json!(fmt_id(id));
        }
        json!({ "error": e })
    }
}

/// Exit code of a non-zero status: itself when it cannot be mistaken for a client-side code.
pub fn status_exit_code(status: u16) -> u8 {
    match status {
        1..=63 | 100..=125 => status as u8,
        _ => OTHER_STATUS,
    }
}

/// The facts of a rejection, from the result body the protocol defines for its status.
fn details(status: u16, body: &[u8]) -> Option<Value> {
    match status {
        1 => protocol::decode_payload::<InsufficientFacts>(body)
            .ok()
            .and_then(|f| serde_json::to_value(f).ok()),
        9 => protocol::decode_payload::<CompareFacts>(body)
            .ok()
            .and_then(|f| serde_json::to_value(f).ok()),
        17 => protocol::decode_payload::<InUseFacts>(body)
            .ok()
            .map(|f| in_use_json(&f)),
        _ => None,
    }
}

/// The facts of an `in_use` (17) rejection as JSON: the kind by name, the example
/// reservation id as a string of 32 hex digits (like every id), `null` when there is none.
fn in_use_json(f: &InUseFacts) -> Value {
    let kind = match f.kind {
        protocol::in_use_kind::LOCATION => "location",
        protocol::in_use_kind::CHANNEL => "channel",
        _ => "unknown",
    };
    json!({
        "kind": kind,
        "id": f.id,
        "channels": f.channels,
        "channels_total": f.channels_total,
        "skus_with_stock": f.skus_with_stock,
        "skus_with_holds": f.skus_with_holds,
        "skus_with_safety_stock": f.skus_with_safety_stock,
        "example_sku": (!f.example_sku.is_empty()).then_some(&f.example_sku),
        "reservations": f.reservations,
        "example_reservation": (f.example_reservation != 0).then(|| fmt_id(f.example_reservation)),
    })
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Failure {
        let kind = match &e {
            ClientError::Status { status, body, .. } => Kind::Server {
                status: *status,
                details: details(*status, body),
            },
            ClientError::Refused { status, .. } => Kind::Server {
                status: *status,
                details: None,
            },
            ClientError::Connect(_) => Kind::Unavailable,
            ClientError::Timeout => Kind::Timeout,
            ClientError::Disconnected | ClientError::Lagged { .. } => Kind::Disconnected,
            ClientError::NotOmnistock { .. } => Kind::NotOmnistock,
            ClientError::Protocol(_) => Kind::BadResponse,
            ClientError::Tls(_) => Kind::Tls,
        };
        let message = match &e {
            // The name is in the error object and the prefix of the human line already.
            ClientError::Status { message, .. } | ClientError::Refused { message, .. } => {
                message.clone()
            }
            other => other.to_string(),
        };
        Failure::new(kind, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_status_shares_an_exit_code_with_a_client_side_failure() {
        let client = [USAGE, STALE, UNAVAILABLE, INTERNAL, TEMPFAIL, PROTOCOL];
        for s in 1..=u16::MAX {
            let code = status_exit_code(s);
            assert_ne!(code, 0, "{s}");
            assert!(!client.contains(&code), "status {s} exits {code}");
            assert!(
                !(64..=78).contains(&code),
                "status {s} exits {code} (sysexits band)"
            );
            assert!(code < 126, "status {s} exits {code} (shell-reserved)");
        }
        for s in (1..=17).chain([19, 20]).chain(100..=112) {
            assert_eq!(
                status_exit_code(s) as u16,
                s,
                "defined statuses exit as themselves"
            );
        }
        let stale = Failure::new(Kind::Stale, "superseded");
        assert_eq!(
            (stale.name(), stale.exit_code(), stale.retriable()),
            ("recommendation_not_found", STALE, false)
        );
        assert_eq!(status_exit_code(64), OTHER_STATUS);
        assert_eq!(status_exit_code(126), OTHER_STATUS);
    }

    #[test]
    fn client_errors_get_their_own_names_and_codes() {
        let cases = [
            (
                ClientError::Connect("refused".into()),
                "unavailable",
                UNAVAILABLE,
                true,
            ),
            (ClientError::Timeout, "timeout", TEMPFAIL, true),
            (ClientError::Disconnected, "disconnected", TEMPFAIL, true),
            (
                ClientError::NotOmnistock {
                    got: "HTTP/1.1".into(),
                },
                "not_omnistock",
                PROTOCOL,
                false,
            ),
            (
                ClientError::Protocol("x".into()),
                "bad_response",
                PROTOCOL,
                false,
            ),
        ];
        for (e, name, code, retriable) in cases {
            let f = Failure::from(e);
            assert_eq!(
                (f.name(), f.exit_code(), f.retriable()),
                (name, code, retriable)
            );
            assert_eq!(f.to_json()["error"]["status"], Value::Null);
        }
    }

    #[test]
    fn a_rejection_keeps_its_status_name_and_facts() {
        let body = protocol::encode_payload(&InsufficientFacts {
            line: 0,
            sku: "TEE".into(),
            requested: 9,
            available: 5,
        })
        .unwrap();
        let f = Failure::from(ClientError::from_status(
            1,
            "insufficient stock".into(),
            body,
        ))
        .with_request_id(42);
        assert_eq!(f.exit_code(), 1);
        let j = f.to_json();
        assert_eq!(j["error"]["status"], 1);
        assert_eq!(j["error"]["name"], "insufficient_stock");
        assert_eq!(j["error"]["retriable"], false);
        assert_eq!(j["error"]["details"]["available"], 5);
        assert_eq!(j["error"]["request_id"], "0000000000000000000000000000002a");
        let busy = Failure::from(ClientError::from_status(13, String::new(), vec![]));
        assert!(busy.retriable() && busy.to_json()["error"].get("details").is_none());
    }
}
