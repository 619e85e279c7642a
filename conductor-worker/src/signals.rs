//! The cancel signal that reaches even a busy thread.
//!
//! A soft cancel normally arrives as a message on the socket, or as SIGTERM/SIGINT, and is seen
//! by the event loop. A native task computing without awaiting holds the conductor's only thread,
//! so the event loop cannot run; the signal handler installed here still does, and sets a flag
//! that [`TaskContext::is_cancelled`](crate::TaskContext::is_cancelled) reads. The supervisor
//! sends SIGUSR1 after its `Cancel` message for that reason.

use std::sync::atomic::{AtomicBool, Ordering};

static CANCEL_SIGNALLED: AtomicBool = AtomicBool::new(false);

/// The signals that mean "cancel": SIGTERM and SIGINT (from anyone), SIGUSR1 (the supervisor's
/// nudge after a `Cancel` message).
pub const CANCEL_SIGNALS: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGUSR1];

/// Installs the flag-setting handlers. Call before anything else, so that no cancel signal
/// finds the default action (which would end the process).
pub fn install() -> std::io::Result<()> {
    for signal in CANCEL_SIGNALS {
        // SAFETY: the action only stores to an atomic, which is async-signal-safe; the registry
        // chains it with tokio's own handler for the same signal.
        unsafe {
            signal_hook_registry::register(signal, || {
                CANCEL_SIGNALLED.store(true, Ordering::SeqCst)
            })
        }?;
    }
    Ok(())
}

/// True once any cancel signal arrived.
#[must_use]
pub fn cancel_signalled() -> bool {
    CANCEL_SIGNALLED.load(Ordering::SeqCst)
}
