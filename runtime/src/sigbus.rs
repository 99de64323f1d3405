//! Surviving a segment file truncated under us.
//!
//! A file another program made (or any named segment) can be truncated
//! while mapped; touching a page past the new end raises SIGBUS, which by
//! default ends the whole process, and wasmtime does not handle SIGBUS on
//! Linux. This module installs one process-wide SIGBUS handler. For a
//! fault inside a registered range (the host's mapping of a segment file,
//! or a guest's window onto it), it maps a private zero page over the
//! faulting page, so the access completes, and raises that segment's
//! `truncated` flag; the runtime then stops the sandbox with an error. Any
//! other SIGBUS goes to the handler that was there before, or the default.
//!
//! The handler only loads atomics, makes one `mmap` call (async-signal
//! safe) and stores an atomic flag.

use std::sync::Arc;
use std::sync::Once;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};

const SLOTS: usize = 256;
const PAGE: usize = 4096;

struct Range {
    start: AtomicUsize,
    end: AtomicUsize,
    flag: AtomicPtr<AtomicBool>,
}

#[allow(
    clippy::declare_interior_mutable_const,
    reason = "used only to initialize the static array"
)]
const FREE: Range = Range {
    start: AtomicUsize::new(0),
    end: AtomicUsize::new(0),
    flag: AtomicPtr::new(std::ptr::null_mut()),
};
static RANGES: [Range; SLOTS] = [FREE; SLOTS];
static INSTALL: Once = Once::new();
static mut PREVIOUS: std::mem::MaybeUninit<libc::sigaction> = std::mem::MaybeUninit::zeroed();

/// A registered range; unregistered on drop.
pub(crate) struct Guard {
    slot: usize,
    _flag: Arc<AtomicBool>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let r = &RANGES[self.slot];
        r.end.store(0, Ordering::SeqCst);
        r.flag.store(std::ptr::null_mut(), Ordering::SeqCst);
        r.start.store(0, Ordering::SeqCst);
    }
}

/// Registers `[start, start + len)`: a SIGBUS there maps a zero page and
/// raises `flag`. `None` when every slot is taken (the range then stays
/// unprotected, as without this module).
pub(crate) fn protect(start: *const u8, len: usize, flag: &Arc<AtomicBool>) -> Option<Guard> {
    INSTALL.call_once(install);
    let start = start as usize;
    for (slot, r) in RANGES.iter().enumerate() {
        if r.start
            .compare_exchange(0, start, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            r.flag
                .store(Arc::as_ptr(flag) as *mut AtomicBool, Ordering::SeqCst);
            r.end.store(start + len, Ordering::SeqCst);
            return Some(Guard {
                slot,
                _flag: flag.clone(),
            });
        }
    }
    tracing::warn!("too many mapped segments to protect against truncation");
    None
}

fn install() {
    // SAFETY: a plain sigaction call with a handler of the SA_SIGINFO
    // signature; PREVIOUS is written once, here, before the handler can
    // run (`Once`).
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = handler as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO | libc::SA_NODEFER | libc::SA_ONSTACK;
        libc::sigemptyset(&mut action.sa_mask);
        let previous = (&raw mut PREVIOUS).cast::<libc::sigaction>();
        if libc::sigaction(libc::SIGBUS, &action, previous) != 0 {
            tracing::warn!(
                "could not install the SIGBUS handler: segments truncated under shmrt will end it"
            );
        }
    }
}

extern "C" fn handler(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers.
    let addr = unsafe { (*info).si_addr() } as usize;
    for r in &RANGES {
        let start = r.start.load(Ordering::SeqCst);
        if start == 0 || addr < start || addr >= r.end.load(Ordering::SeqCst) {
            continue;
        }
        let page = addr & !(PAGE - 1);
        // SAFETY: the page is inside a mapping we own (registered); a
        // private zero page replaces the vanished file page.
        let mapped = unsafe {
            libc::mmap(
                page as *mut libc::c_void,
                PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        let flag = r.flag.load(Ordering::SeqCst);
        if !flag.is_null() {
            // SAFETY: the guard keeps the flag alive while registered.
            unsafe { (*flag).store(true, Ordering::SeqCst) };
        }
        if mapped != libc::MAP_FAILED {
            return;
        }
        break;
    }
    // Not ours: what was there before, or the default action.
    // SAFETY: PREVIOUS was filled by `install` before this handler existed.
    unsafe {
        let prev = &*(&raw const PREVIOUS).cast::<libc::sigaction>();
        if prev.sa_flags & libc::SA_SIGINFO != 0 && prev.sa_sigaction > libc::SIG_IGN {
            let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                std::mem::transmute(prev.sa_sigaction);
            f(sig, info, ctx);
        } else if prev.sa_sigaction > libc::SIG_IGN {
            let f: extern "C" fn(libc::c_int) = std::mem::transmute(prev.sa_sigaction);
            f(sig);
        } else {
            // Default: restore it; the faulting access repeats and ends the
            // process as it would have without us.
            libc::signal(libc::SIGBUS, libc::SIG_DFL);
        }
    }
}
