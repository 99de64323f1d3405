//! Surviving a segment file truncated under us.
//!
//! A file another program made (or any named segment) can be truncated
//! while mapped; touching a page past the new end raises SIGBUS
//! (`BUS_ADRERR`), which by default ends the whole process, and wasmtime
//! does not handle SIGBUS on Linux. This module installs one process-wide
//! SIGBUS handler. For a `BUS_ADRERR` fault inside a registered range (the
//! host's mapping of a segment file, or a guest's window onto it), it maps
//! a private zero page over the faulting page, so the access completes, and
//! raises that range's `truncated` flag; the runtime then stops the sandbox
//! with an error. Every other SIGBUS goes to the disposition that was there
//! before (see [`chain`]).
//!
//! Ranges live in a registry that only grows: a singly linked list of
//! fixed-size chunks of slots, pushed at the head with a CAS, allocated by
//! [`protect`] (never by the handler) and never freed, so the handler can
//! walk it without locks or allocation. A slot is claimed with a CAS
//! (`FREE` -> `CLAIMED`), filled, and published (`LIVE`); the guard retires
//! it (`CLAIMED`), waits until no handler is inside the registry
//! ([`IN_HANDLER`]), then frees it. That wait is what keeps the range's
//! flag alive for a handler that saw the slot `LIVE`, and what keeps a
//! handler from reading a slot half rewritten for another range.
//!
//! The handler only loads and stores atomics, makes one `mmap` call and,
//! when it chains, `sigaction`, `pthread_sigmask` and `raise`: all
//! async-signal-safe. It saves and restores `errno`.

use std::mem::MaybeUninit;
use std::ptr;
use std::sync::Arc;
use std::sync::Once;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};

/// Slots per chunk of the registry (a chunk is 2 KiB on 64-bit).
const CHUNK_SLOTS: usize = 64;

/// Slot states.
const FREE: usize = 0;
/// Being filled in by `protect`, or being retired by a guard.
const CLAIMED: usize = 1;
const LIVE: usize = 2;

struct Slot {
    state: AtomicUsize,
    start: AtomicUsize,
    end: AtomicUsize,
    flag: AtomicPtr<AtomicBool>,
}

struct Chunk {
    slots: [Slot; CHUNK_SLOTS],
    /// The chunk pushed before this one; set before this one is published.
    next: AtomicPtr<Chunk>,
}

/// The most recently pushed chunk (null until the first `protect`).
static CHUNKS: AtomicPtr<Chunk> = AtomicPtr::new(ptr::null_mut());
/// Handlers currently reading the registry.
static IN_HANDLER: AtomicUsize = AtomicUsize::new(0);
/// The OS page size, stored by `install` before any range is registered:
/// the handler reads it only for a range it found LIVE, so the range's
/// publication (SYNC POINT range-published) publishes this store too.
static PAGE: AtomicUsize = AtomicUsize::new(0);
static INSTALL: Once = Once::new();
/// The SIGBUS disposition found at install; written before our handler is
/// installed, read-only afterwards.
static mut PREVIOUS: MaybeUninit<libc::sigaction> = MaybeUninit::zeroed();
/// The previous handler had `SA_RESETHAND` and has been called once: the
/// kernel would have reset it to the default, so we do too from then on.
static PREVIOUS_SPENT: AtomicBool = AtomicBool::new(false);

/// A registered range; unregistered on drop.
pub(crate) struct Guard {
    slot: &'static Slot,
    _flag: Arc<AtomicBool>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        // SeqCst, with the handler's SeqCst increment of IN_HANDLER and its
        // SeqCst load of the state, is a store-then-load on each side
        // (Dekker): in the single order of SeqCst operations, either the
        // handler's load comes after this store (it sees CLAIMED and skips
        // the slot) or its increment comes before our loads of IN_HANDLER
        // below (we wait for it). Release/Acquire alone would allow both
        // sides to miss each other.
        self.slot.state.store(CLAIMED, Ordering::SeqCst);
        while IN_HANDLER.load(Ordering::SeqCst) != 0 {
            std::thread::yield_now();
        }
        // SYNC POINT slot-freed: pairs with the Acquire claim in `claim`;
        // the next owner's writes come after every read of this range.
        self.slot.state.store(FREE, Ordering::Release);
    }
}

/// Registers `[start, start + len)`: a `BUS_ADRERR` SIGBUS there maps a
/// zero page and raises `flag`. `None` for an empty range.
///
/// Drop the guard before unmapping the range: a fault on some later
/// mapping at the same address would otherwise get a zero page too.
pub(crate) fn protect(start: *const u8, len: usize, flag: &Arc<AtomicBool>) -> Option<Guard> {
    if len == 0 {
        return None;
    }
    INSTALL.call_once(install);
    let slot = claim();
    let start = start as usize;
    slot.start.store(start, Ordering::Relaxed);
    slot.end.store(start.saturating_add(len), Ordering::Relaxed);
    slot.flag
        .store(Arc::as_ptr(flag).cast_mut(), Ordering::Relaxed);
    // SYNC POINT range-published: pairs with the handler's (SeqCst, so
    // Acquire) load of the state; it then sees the three fields above.
    slot.state.store(LIVE, Ordering::Release);
    Some(Guard {
        slot,
        _flag: flag.clone(),
    })
}

/// A free slot, now `CLAIMED` by the caller: the first free one in the
/// registry, or the first of a new chunk.
fn claim() -> &'static Slot {
    for chunk in chunks() {
        for slot in &chunk.slots {
            // SYNC POINT slot-freed (Acquire on success), see Guard::drop.
            if slot
                .state
                .compare_exchange(FREE, CLAIMED, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                return slot;
            }
        }
    }
    let chunk: &'static Chunk = Box::leak(Box::new(Chunk {
        slots: [const {
            Slot {
                state: AtomicUsize::new(FREE),
                start: AtomicUsize::new(0),
                end: AtomicUsize::new(0),
                flag: AtomicPtr::new(ptr::null_mut()),
            }
        }; CHUNK_SLOTS],
        next: AtomicPtr::new(ptr::null_mut()),
    }));
    // Not published yet: nobody else sees it.
    chunk.slots[0].state.store(CLAIMED, Ordering::Relaxed);
    // SYNC POINT chunk-published: the Release CAS publishes the chunk's
    // contents (and, through our Acquire loads of the older head, every
    // older chunk's) to the Acquire loads in `chunks`.
    let mut head = CHUNKS.load(Ordering::Acquire);
    loop {
        chunk.next.store(head, Ordering::Relaxed);
        match CHUNKS.compare_exchange_weak(
            head,
            ptr::from_ref(chunk).cast_mut(),
            Ordering::Release,
            Ordering::Acquire,
        ) {
            Ok(_) => return &chunk.slots[0],
            Err(now) => head = now,
        }
    }
}

/// The registry's chunks, newest first. Async-signal-safe.
fn chunks() -> impl Iterator<Item = &'static Chunk> {
    // SYNC POINT chunk-published (Acquire), see `claim`.
    let mut next = CHUNKS.load(Ordering::Acquire);
    std::iter::from_fn(move || {
        // SAFETY: chunks are leaked boxes, never freed; a non-null pointer
        // was published fully initialized (chunk-published).
        let chunk = unsafe { next.as_ref() }?;
        next = chunk.next.load(Ordering::Acquire);
        Some(chunk)
    })
}

fn install() {
    // Relaxed: published with the first registered range (see PAGE).
    PAGE.store(rustix::param::page_size(), Ordering::Relaxed);
    // SAFETY: plain sigaction calls. PREVIOUS is written here, before our
    // handler is installed (`Once`), and only read afterwards. It is read
    // first and then written again from the second call's old action, in
    // case another thread changed the disposition in between.
    unsafe {
        let previous = (&raw mut PREVIOUS).cast::<libc::sigaction>();
        libc::sigaction(libc::SIGBUS, ptr::null(), previous);
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = handler as *const () as usize;
        // SA_NODEFER: a SIGBUS while a chained handler runs must reach us
        // (a blocked fault signal kills the process outright); SA_ONSTACK:
        // run on the thread's alternate stack, if it has one, like the
        // std and wasmtime handlers.
        action.sa_flags = libc::SA_SIGINFO | libc::SA_NODEFER | libc::SA_ONSTACK;
        libc::sigemptyset(&mut action.sa_mask);
        let mut found: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(libc::SIGBUS, &action, &mut found) != 0 {
            tracing::warn!(
                "could not install the SIGBUS handler: segments truncated under shmrt will end it"
            );
        } else if found.sa_sigaction != (*previous).sa_sigaction {
            previous.write(found);
        }
    }
}

extern "C" fn handler(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: errno is thread-local; saved here, restored before returning.
    let errno = unsafe { *libc::__errno_location() };
    // SAFETY: the kernel passes a valid siginfo to SA_SIGINFO handlers;
    // si_addr is meaningful for the fault codes checked first.
    let (code, addr) = unsafe { ((*info).si_code, (*info).si_addr() as usize) };
    if !(code == libc::BUS_ADRERR && zero_fill(addr)) {
        // SAFETY: the arguments are the ones the kernel gave us.
        unsafe { chain(sig, info, ctx) };
    }
    // SAFETY: errno is thread-local and `__errno_location` always returns
    // this thread's valid slot; we restore the value saved on entry.
    unsafe { *libc::__errno_location() = errno };
}

/// Maps a zero page over `addr` if a registered range holds it, and raises
/// that range's flag. Whether it did.
fn zero_fill(addr: usize) -> bool {
    // SeqCst: see Guard::drop (the Dekker pair with the state store).
    IN_HANDLER.fetch_add(1, Ordering::SeqCst);
    let mut done = false;
    'search: for chunk in chunks() {
        for slot in &chunk.slots {
            // SeqCst for the Dekker pair; as an Acquire it is also the
            // other end of SYNC POINT range-published.
            if slot.state.load(Ordering::SeqCst) != LIVE {
                continue;
            }
            // Stable while we are counted in IN_HANDLER (Guard::drop waits).
            let start = slot.start.load(Ordering::Relaxed);
            let end = slot.end.load(Ordering::Relaxed);
            if addr < start || addr >= end {
                continue;
            }
            let page = addr & !(PAGE.load(Ordering::Relaxed) - 1);
            // SAFETY: the page is inside a registered mapping, whose owner
            // unregisters before unmapping; a private zero page replaces the
            // vanished file page.
            let mapped = unsafe {
                libc::mmap(
                    page as *mut libc::c_void,
                    PAGE.load(Ordering::Relaxed),
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                    -1,
                    0,
                )
            };
            let flag = slot.flag.load(Ordering::Relaxed);
            // SAFETY: the guard keeps the flag alive until it has seen
            // IN_HANDLER drop to zero, and we are still counted.
            if let Some(flag) = unsafe { flag.as_ref() } {
                // SYNC POINT truncated: pairs with the Acquire load in
                // SegmentFile::was_truncated (and the inspect report).
                flag.store(true, Ordering::Release);
            }
            done = mapped != libc::MAP_FAILED;
            break 'search;
        }
    }
    // Release: our reads of the slot come before the guard's wait ends.
    IN_HANDLER.fetch_sub(1, Ordering::Release);
    done
}

/// Hands a SIGBUS that is not ours to the disposition found at install, as
/// the kernel would have delivered it:
///
/// - a handler (`SA_SIGINFO` or plain) is called with the arguments it
///   expects, with its `sa_mask` blocked and SIGBUS too unless it has
///   `SA_NODEFER`, and the mask restored after it returns. With
///   `SA_RESETHAND`, it is called once; later ones take the default action
///   (we keep our handler for our ranges instead of resetting the
///   disposition). It runs on our stack: `SA_ONSTACK` cannot be honoured
///   separately, but ours asks for the alternate stack too.
/// - `SIG_IGN`: a SIGBUS sent by a process (`kill`, `tgkill`) is ignored; a
///   fault cannot be, and the kernel kills a process that ignores one, so
///   it is treated as `SIG_DFL`.
/// - `SIG_DFL`: the default is restored; after a fault we return and the
///   faulting access repeats and ends the process with SIGBUS, a core dump
///   pointing at it; after a sent or asynchronous SIGBUS we raise it again.
///
/// # Safety
///
/// The arguments of a SIGBUS delivery, from inside the handler.
unsafe fn chain(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: valid siginfo (caller).
    let code = unsafe { (*info).si_code };
    let fault = matches!(
        code,
        libc::BUS_ADRALN | libc::BUS_ADRERR | libc::BUS_OBJERR | libc::BUS_MCEERR_AR
    );
    // SAFETY: PREVIOUS was written by `install` before this handler existed
    // and is not written again.
    let prev = unsafe { &*(&raw const PREVIOUS).cast::<libc::sigaction>() };
    let mut action = prev.sa_sigaction;
    if action == libc::SIG_IGN {
        if code <= 0 {
            return;
        }
        action = libc::SIG_DFL;
    }
    if action != libc::SIG_DFL
        && prev.sa_flags & libc::SA_RESETHAND != 0
        && PREVIOUS_SPENT.swap(true, Ordering::Relaxed)
    {
        action = libc::SIG_DFL;
    }
    if action == libc::SIG_DFL {
        // SAFETY: sigaction and raise are async-signal-safe; the action
        // struct is fully initialized.
        unsafe {
            let mut default: libc::sigaction = std::mem::zeroed();
            default.sa_sigaction = libc::SIG_DFL;
            libc::sigemptyset(&mut default.sa_mask);
            libc::sigaction(libc::SIGBUS, &default, ptr::null_mut());
            if !fault {
                libc::raise(libc::SIGBUS);
            }
        }
        return;
    }
    // SAFETY: pthread_sigmask is async-signal-safe; `action` is the
    // handler address found at install, of the signature its flags name.
    unsafe {
        let mut mask = prev.sa_mask;
        if prev.sa_flags & libc::SA_NODEFER == 0 {
            libc::sigaddset(&mut mask, libc::SIGBUS);
        }
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::pthread_sigmask(libc::SIG_BLOCK, &mask, &mut old);
        if prev.sa_flags & libc::SA_SIGINFO != 0 {
            let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                std::mem::transmute(action);
            f(sig, info, ctx);
        } else {
            let f: extern "C" fn(libc::c_int) = std::mem::transmute(action);
            f(sig);
        }
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, ptr::null_mut());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// More ranges than the old fixed table held (256), all registered at
    /// once: a fault in each is absorbed and raises that range's flag.
    #[test]
    fn more_than_256_ranges_are_all_protected() {
        const N: usize = 300;
        let path = std::env::temp_dir().join(format!("shmrt-sigbus-{}", std::process::id()));
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        file.write_all(&[7u8; 4096]).unwrap();
        let maps: Vec<memmap2::Mmap> = (0..N)
            // SAFETY: a private test file; the truncation below is the point.
            .map(|_| unsafe { memmap2::Mmap::map(&file) }.unwrap())
            .collect();
        let flags: Vec<Arc<AtomicBool>> = (0..N).map(|_| Arc::default()).collect();
        let guards: Vec<Guard> = maps
            .iter()
            .zip(&flags)
            .map(|(m, f)| protect(m.as_ptr(), m.len(), f).expect("a guard"))
            .collect();
        assert_eq!(maps[0][0], 7);
        file.set_len(0).unwrap();
        for m in &maps {
            // SAFETY: a mapped page (now past the end of the file: SIGBUS,
            // which the handler turns into a zero page).
            assert_eq!(unsafe { ptr::read_volatile(m.as_ptr()) }, 0);
        }
        for (i, f) in flags.iter().enumerate() {
            assert!(f.load(Ordering::Acquire), "range {i} was not flagged");
        }
        assert!(protect(maps[0].as_ptr(), 0, &flags[0]).is_none());
        drop(guards);
        drop(maps);
    }
}
