//! Reads whose work is large run on a thread of their own, not on the connection tasks'
//! workers: a GET_SKUS of many SKUs (a view of each, then an answer of up to a frame,
//! about 1 MB for 1,200 SKUs at 16 locations) and the lists that read every SKU (AT_RISK,
//! AT_RISK_REGION, REBALANCE_LIST). Run where they arrive, each such read held a worker
//! for milliseconds at a time, and with 16 connections pipelining them every client waited
//! for a worker: a normal client's ping p50 was 3.8–4.2 ms and its p99 26–28 ms. On their
//! own thread the heavy reads share one core among themselves (they interleave there, in
//! order of arrival), the workers stay free for everyone else, and the operating system
//! shares the CPU between the two.
//!
//! The thread runs a current-thread tokio runtime until the server is dropped; a read still
//! running then is cancelled and answered `SHUTTING_DOWN`.

use std::future::Future;

use tokio::sync::oneshot;

use crate::protocol::{failed, status, OpResult};

/// GET_SKUS of at most this many SKUs runs where it arrives (a view or two costs less than
/// the hand-off to the thread and back).
pub(crate) const HEAVY_GET_SKUS: usize = 16;

/// The thread of the heavy reads; stopped when dropped.
pub(crate) struct HeavyReads {
    handle: tokio::runtime::Handle,
    _stop: oneshot::Sender<()>,
}

impl HeavyReads {
    /// Starts the thread (`omnistock-heavy-reads`).
    pub(crate) fn start() -> std::io::Result<HeavyReads> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = rt.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("omnistock-heavy-reads".into())
            .spawn(move || {
                // Until the sender is dropped; the runtime's drop cancels what still runs.
                rt.block_on(async {
                    let _ = stopped.await;
                });
            })?;
        Ok(HeavyReads {
            handle,
            _stop: stop,
        })
    }

    /// Runs `read` on the heavy reads' thread and returns its result. A read cancelled by
    /// the server's end answers `SHUTTING_DOWN`; one that panicked, `INTERNAL_ERROR`.
    pub(crate) async fn run<F>(&self, read: F) -> OpResult
    where
        F: Future<Output = OpResult> + Send + 'static,
    {
        match self.handle.spawn(read).await {
            Ok(r) => r,
            Err(e) if e.is_cancelled() => failed(
                status::SHUTTING_DOWN,
                "the server is shutting down; the read was not finished",
            ),
            Err(_) => {
                tracing::error!("a heavy read panicked");
                failed(status::INTERNAL_ERROR, "the read failed inside the server")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_read_runs_on_the_heavy_thread_and_its_result_comes_back() {
        let h = HeavyReads::start().unwrap();
        let r = h
            .run(async {
                let name = std::thread::current().name().map(str::to_string);
                assert_eq!(name.as_deref(), Some("omnistock-heavy-reads"));
                failed(status::OK, "ran")
            })
            .await;
        assert_eq!((r.status, r.message.as_str()), (status::OK, "ran"));
    }

    #[tokio::test]
    async fn a_read_cancelled_by_the_end_answers_shutting_down() {
        let h = HeavyReads::start().unwrap();
        let handle = h.handle.clone();
        let pending = tokio::spawn(async move {
            let h = HeavyReads {
                handle,
                _stop: oneshot::channel().0,
            };
            h.run(futures::future::pending()).await
        });
        tokio::task::yield_now().await;
        drop(h);
        let r = tokio::time::timeout(std::time::Duration::from_secs(10), pending)
            .await
            .expect("answered once the thread stopped")
            .unwrap();
        assert_eq!(r.status, status::SHUTTING_DOWN);
    }

    #[tokio::test]
    async fn a_read_that_panics_answers_internal_error() {
        let h = HeavyReads::start().unwrap();
        let r = h.run(async { panic!("a bug in a read") }).await;
        assert_eq!(r.status, status::INTERNAL_ERROR);
    }
}
