//! Status codes of operation results and error frames. `0` is success; `1..=99` are the
//! engine's rejection codes with the same numbers (business answers, state unchanged);
//! `100` and above are errors of the server or of the request. Numbers are stable: never
//! renumbered, only added (docs/protocol.md has the table). Pure data: the mapping from the
//! engine's rejections and errors to these codes is `crate::server::status`.

/// Success.
pub const OK: u16 = 0;
/// The request is malformed or out of range (same as the engine's rejection 12).
pub const INVALID_REQUEST: u16 = 12;
/// `BACKUP`: the target path may not receive a backup (relative, exists and is not empty,
/// no parent directory, inside the data directory). Nothing was written.
pub const BACKUP_REFUSED: u16 = 21;
/// `BACKUP`: writing the backup failed (the target's disk or permissions); nothing of it is
/// left and the server's own state is unaffected. Not retriable unchanged: it may succeed
/// once the cause is fixed.
pub const BACKUP_FAILED: u16 = 22;
/// The log could not be written or data is corrupt: writes are stopped.
pub const STORAGE_FAILURE: u16 = 100;
/// The server or engine is shutting down.
pub const SHUTTING_DOWN: u16 = 101;
/// A frame or payload is malformed (bad magic, undecodable body, unexpected frame kind).
pub const PROTOCOL_ERROR: u16 = 102;
/// Missing or unknown auth token (connection-level; the connection is closed).
pub const UNAUTHORIZED: u16 = 103;
/// The connection's role may not run this operation.
pub const FORBIDDEN: u16 = 104;
/// The opcode is reserved for a later version (subscribe, unsubscribe, ack, history).
pub const NOT_IMPLEMENTED: u16 = 105;
/// The opcode is not known at all.
pub const UNKNOWN_OPERATION: u16 = 106;
/// A request frame carries more operations than the server's batch limit.
pub const TOO_MANY_OPERATIONS: u16 = 107;
/// A configured limit was exceeded (frame bytes, connections, lines, engine capacity).
pub const LIMIT_EXCEEDED: u16 = 108;
/// The connection was idle longer than the idle timeout (connection-level).
pub const IDLE_TIMEOUT: u16 = 109;
/// The server failed to build an answer (a bug; the operation may have been applied).
pub const INTERNAL_ERROR: u16 = 110;
/// The client's protocol version is not supported (connection-level).
pub const UNSUPPORTED_VERSION: u16 = 111;
/// The port requires TLS and the client spoke plaintext (connection-level; sent in a
/// plaintext error frame before closing).
pub const TLS_REQUIRED: u16 = 112;

/// A short stable name for a status (logs, `omnistock ctl` output).
pub fn name(status: u16) -> &'static str {
    match status {
        OK => "ok",
        1 => "insufficient_stock",
        2 => "unknown_sku",
        3 => "unknown_location",
        4 => "unknown_channel",
        5 => "location_not_in_channel",
        6 => "reservation_not_found",
        7 => "reservation_exists",
        8 => "idempotency_conflict",
        9 => "compare_failed",
        10 => "exceeds_hold",
        11 => "quantity_out_of_range",
        12 => "invalid_request",
        13 => "busy",
        14 => "not_expired",
        15 => "reservation_expired",
        16 => "in_progress",
        17 => "in_use",
        19 => "intelligence_off",
        20 => "subscription_not_found",
        BACKUP_REFUSED => "backup_refused",
        BACKUP_FAILED => "backup_failed",
        STORAGE_FAILURE => "storage_failure",
        SHUTTING_DOWN => "shutting_down",
        PROTOCOL_ERROR => "protocol_error",
        UNAUTHORIZED => "unauthorized",
        FORBIDDEN => "forbidden",
        NOT_IMPLEMENTED => "not_implemented",
        UNKNOWN_OPERATION => "unknown_operation",
        TOO_MANY_OPERATIONS => "too_many_operations",
        LIMIT_EXCEEDED => "limit_exceeded",
        IDLE_TIMEOUT => "idle_timeout",
        INTERNAL_ERROR => "internal_error",
        UNSUPPORTED_VERSION => "unsupported_version",
        TLS_REQUIRED => "tls_required",
        _ => "unknown_status",
    }
}

/// Whether retrying the same operation (same request id) later may succeed unchanged.
pub fn is_retriable(status: u16) -> bool {
    matches!(status, 13 | 16 | SHUTTING_DOWN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_defined_status_has_a_name() {
        for s in (0..=17).chain(19..=22).chain(100..=112) {
            assert_ne!(name(s), "unknown_status", "{s}");
        }
        assert_eq!(name(INVALID_REQUEST), "invalid_request");
        assert!(is_retriable(SHUTTING_DOWN) && !is_retriable(OK));
    }
}
