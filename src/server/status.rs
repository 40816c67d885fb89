//! The wire status of engine answers: a [`Rejection`] keeps its stable [`RejectionCode`]
//! number (`1..=99`), an [`EngineError`] becomes one of the server errors (`100` and above).
//! The codes themselves and their names are pure protocol data (`crate::protocol::status`);
//! this mapping needs the engine's types, so it lives with the server.

use crate::domain::{Rejection, RejectionCode};
use crate::engine::{EngineError, Failure};
use crate::protocol::status::{LIMIT_EXCEEDED, SHUTTING_DOWN, STORAGE_FAILURE};

/// The wire status of a rejection: its stable code.
pub fn of_rejection(r: &Rejection) -> u16 {
    of_code(r.code())
}

/// The wire status of a rejection code (same number).
pub fn of_code(c: RejectionCode) -> u16 {
    c as u16
}

/// The wire status of an engine error.
pub fn of_engine_error(e: &EngineError) -> u16 {
    match e {
        EngineError::Storage(_) | EngineError::Corrupt(_) | EngineError::Startup(_) => {
            STORAGE_FAILURE
        }
        EngineError::Limit(_) => LIMIT_EXCEEDED,
        EngineError::ShuttingDown => SHUTTING_DOWN,
        // Retriable like a full mailbox: the same code and meaning ("busy").
        EngineError::Overloaded(_) => of_code(RejectionCode::Busy),
    }
}

/// The wire status of any engine failure.
pub fn of_failure(f: &Failure) -> u16 {
    match f {
        Failure::Rejected(r) => of_rejection(r),
        Failure::Error(e) => of_engine_error(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::status::{name, INVALID_REQUEST};

    #[test]
    fn rejections_keep_their_numbers_and_errors_map_to_100_plus() {
        assert_eq!(of_rejection(&Rejection::Busy), 13);
        assert_eq!(of_rejection(&Rejection::InProgress(1)), 16);
        assert_eq!(
            of_rejection(&Rejection::invalid("x".to_string())),
            INVALID_REQUEST
        );
        assert_eq!(of_engine_error(&EngineError::ShuttingDown), SHUTTING_DOWN);
        assert_eq!(
            of_engine_error(&EngineError::Storage("x".into())),
            STORAGE_FAILURE
        );
        assert_eq!(
            of_engine_error(&EngineError::Corrupt("x".into())),
            STORAGE_FAILURE
        );
        assert_eq!(
            of_engine_error(&EngineError::Limit("x".into())),
            LIMIT_EXCEEDED
        );
        assert_eq!(name(of_rejection(&Rejection::Busy)), "busy");
        // postmortem: log back-pressure, documented as retriable, was answered 100
        // "writes are stopped" while /readyz still said ready.
        let overload = of_engine_error(&EngineError::Overloaded("x".into()));
        assert_eq!(overload, 13);
        assert!(crate::protocol::status::is_retriable(overload));
    }
}
