//! Turning sled's panics on damaged files into errors.
//!
//! sled 0.34 panics instead of returning an error on some damaged files: truncating `db`
//! makes its open-time segment recovery index out of bounds (`pagecache/segment.rs`), and
//! a page read from a damaged region can do the same later. Every sled call that reads
//! data written before this process started (open, the open-time scan, checkpoint and
//! position reads, replay) runs under [`guarded`], which catches the unwind on the calling
//! thread and returns the panic's message, so the WAL reports
//! [`super::WalError::CorruptFile`] instead of taking the process down with exit 101.
//!
//! Silence: the first call installs one process-wide panic hook that stays installed. It
//! records (instead of printing) panics raised on a thread that is inside [`guarded`] and
//! hands every other panic to the hook that was installed before it, unchanged; so no
//! "thread panicked" line or backtrace reaches stderr for a caught sled panic, while every
//! other panic prints as it always did. A hook installed by the application *after* the
//! first WAL open replaces this one; guarded panics are then still caught, only printed.
//!
//! sled's own background threads are outside this: its I/O pool catches their panics
//! itself (and then refuses further work with an error), and its flusher thread only
//! exists once open has succeeded, and stops when the database is dropped.

use std::cell::{Cell, RefCell};
use std::panic::{self, AssertUnwindSafe};
use std::sync::Once;

thread_local! {
    /// True while this thread is inside [`guarded`].
    static GUARDED: Cell<bool> = const { Cell::new(false) };
    /// Message and location of the last panic caught on this thread.
    static CAUGHT: RefCell<Option<String>> = const { RefCell::new(None) };
}

static HOOK: Once = Once::new();

fn install_hook() {
    HOOK.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if GUARDED.with(Cell::get) {
                let location = info
                    .location()
                    .map(|l| format!(" at {}:{}", l.file(), l.line()))
                    .unwrap_or_default();
                let message = format!("{}{location}", payload_text(info.payload()));
                CAUGHT.with(|c| *c.borrow_mut() = Some(message));
            } else {
                previous(info);
            }
        }));
    });
}

fn payload_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-text payload".to_owned()
    }
}

/// Runs `f`, returning `Err(panic message and location)` if it panics. Nothing is printed
/// for such a panic. Whatever `f` was building when it panicked is dropped during the
/// unwind; callers must treat the storage it touched as unusable.
pub(crate) fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    install_hook();
    let outer = GUARDED.with(|g| g.replace(true));
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    GUARDED.with(|g| g.set(outer));
    result.map_err(|payload| {
        CAUGHT
            .with(|c| c.borrow_mut().take())
            .unwrap_or_else(|| payload_text(payload.as_ref()))
    })
}

#[cfg(test)]
mod tests {
    use super::guarded;

    #[test]
    fn a_panic_becomes_its_message_and_location() {
        let err = guarded(|| -> u32 {
            let v: Vec<u32> = Vec::new();
            let i = v.len() + 3;
            v[i]
        })
        .unwrap_err();
        assert!(err.contains("index out of bounds"), "{err}");
        assert!(err.contains("guard.rs"), "{err}");
        assert_eq!(guarded(|| 7).unwrap(), 7);
    }
}
