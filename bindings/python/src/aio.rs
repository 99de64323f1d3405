//! `await sandbox.recv_async()`: receives on the asyncio loop's own
//! thread, with no thread per sandbox (nor any thread of ours).
//!
//! Each loop gets a [`Hub`]: a socket pair whose read end the loop
//! watches (`loop.add_reader`), and a queue of receives to poll again.
//! A receive is an `asyncio.Future` and a [`RecvPoll`] that polls the
//! runtime's [`HostReceiver::poll_recv`](shmrt::HostReceiver::poll_recv)
//! with a waker that only queues it and writes a byte to the socket: the
//! runtime may wake it on any thread (the guest's, its wake timer's), and
//! taking the GIL there could deadlock with a thread that holds the GIL
//! while it joins that thread. The loop then reads the socket and polls
//! the queued receives, on its own thread, with the GIL let go while the
//! runtime polls.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::AtomicBool;
use std::task::{Context, Wake, Waker};

use shmrt::RecvWait;

use super::*;

/// What a waker reaches: no Python in it.
struct HubInner {
    /// Receives to poll again, by id.
    queue: Mutex<Vec<u64>>,
    /// A byte is in the socket that the loop has not read yet.
    signalled: AtomicBool,
    /// The write end.
    tx: UnixStream,
}

impl HubInner {
    fn wake(&self, id: u64) {
        self.queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(id);
        // SeqCst: pairs with the loop's store of `false` before it takes
        // the queue (see `Hub::drain`).
        if !self.signalled.swap(true, Ordering::SeqCst) {
            // Non-blocking: a full socket has bytes the loop will read.
            let _ = (&self.tx).write(&[1]);
        }
    }
}

/// Wakes receive `id` of a hub.
struct HubWake {
    hub: Arc<HubInner>,
    id: u64,
}

impl Wake for HubWake {
    fn wake(self: Arc<Self>) {
        self.hub.wake(self.id);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.hub.wake(self.id);
    }
}

/// The receives of one event loop.
#[pyclass(module = "shmrt", frozen)]
pub(crate) struct Hub {
    inner: Arc<HubInner>,
    rx: UnixStream,
    pollers: Mutex<HashMap<u64, Py<RecvPoll>>>,
    next_id: AtomicU64,
}

#[pymethods]
impl Hub {
    /// The loop's reader callback: reads the socket, then polls every
    /// receive queued.
    fn drain(&self, py: Python<'_>) -> PyResult<()> {
        let mut sink = [0u8; 256];
        while let Ok(n) = (&self.rx).read(&mut sink) {
            if n == 0 {
                break;
            }
        }
        // After the read, before the queue is taken: a wake after this
        // writes again (see `HubInner::wake`).
        self.inner.signalled.store(false, Ordering::SeqCst);
        let mut ids =
            std::mem::take(&mut *self.inner.queue.lock().unwrap_or_else(|e| e.into_inner()));
        ids.sort_unstable();
        ids.dedup();
        for id in ids {
            let poller = self
                .pollers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&id)
                .map(|p| p.clone_ref(py));
            if let Some(p) = poller {
                // One receive's failure is its own: the others still poll.
                let p = p.bind(py);
                if let Err(e) = RecvPoll::poll(p) {
                    let this = p.get();
                    this.finish(py);
                    let future = this.future.bind(py);
                    if !future.call_method0(intern!(py, "done"))?.is_truthy()? {
                        future.call_method1(intern!(py, "set_exception"), (e.value(py),))?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// The hubs by loop (weak keys: a hub goes with its loop).
static HUBS: GILOnceCell<Py<PyAny>> = GILOnceCell::new();

fn hub_for<'py>(py: Python<'py>, event_loop: &Bound<'py, PyAny>) -> PyResult<Bound<'py, Hub>> {
    let hubs = HUBS
        .get_or_try_init(py, || {
            py.import("weakref")?
                .getattr("WeakKeyDictionary")?
                .call0()
                .map(Bound::unbind)
        })?
        .bind(py);
    let known = hubs.call_method1(intern!(py, "get"), (event_loop,))?;
    if let Ok(hub) = known.downcast::<Hub>() {
        return Ok(hub.clone());
    }
    let (rx, tx) = UnixStream::pair()
        .and_then(|(rx, tx)| {
            rx.set_nonblocking(true)?;
            tx.set_nonblocking(true)?;
            Ok((rx, tx))
        })
        .map_err(|e| {
            PyOSError::new_err(format!("recv_async: a socket pair for the event loop: {e}"))
        })?;
    let fd = rx.as_raw_fd();
    let hub = Bound::new(
        py,
        Hub {
            inner: Arc::new(HubInner {
                queue: Mutex::new(Vec::new()),
                signalled: AtomicBool::new(false),
                tx,
            }),
            rx,
            pollers: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
        },
    )?;
    event_loop.call_method1("add_reader", (fd, hub.getattr("drain")?))?;
    hubs.set_item(event_loop, &hub)?;
    Ok(hub)
}

/// One `recv_async` in progress.
#[pyclass(module = "shmrt", frozen)]
pub(crate) struct RecvPoll {
    sandbox: Arc<Shared>,
    hub: Py<Hub>,
    id: u64,
    future: Py<PyAny>,
    waker: Waker,
    /// The doorbell registration, made by the first poll.
    wait: Mutex<Option<RecvWait>>,
    /// Settled or cancelled: no more polls.
    done: AtomicBool,
    /// The loop's timer of the timeout, cancelled when done.
    timer: Mutex<Option<Py<PyAny>>>,
    /// For the timeout's message.
    timeout: Option<Duration>,
}

impl RecvPoll {
    /// Polls the sandbox once; settles the future when a message (or an
    /// error) came.
    fn poll(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let future = this.future.bind(py);
        if future.call_method0(intern!(py, "done"))?.is_truthy()? {
            this.finish(py);
            return Ok(());
        }
        if this.done.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut wait = this.wait.lock().unwrap_or_else(|e| e.into_inner());
        let w: &mut Option<RecvWait> = &mut wait;
        let waker = &this.waker;
        // The message held from before is released first (as `recv`
        // does), then the registration made, once.
        let got = this.sandbox.take_message(py, |h| {
            let w = match w {
                Some(w) => w,
                None => w.insert(h.recv_wait()?),
            };
            let mut cx = Context::from_waker(waker);
            Ok(h.poll_recv(w, &mut cx)?.map(Some))
        });
        drop(wait);
        match got {
            Ok(None) => Ok(()),
            Ok(Some(msg)) => {
                this.finish(py);
                future.call_method1(intern!(py, "set_result"), (msg,))?;
                Ok(())
            }
            Err(e) => {
                this.finish(py);
                future.call_method1(intern!(py, "set_exception"), (e.value(py),))?;
                Ok(())
            }
        }
    }

    /// Ends the receive: no more polls, the doorbell registration and the
    /// timer go.
    fn finish(&self, py: Python<'_>) {
        self.done.store(true, Ordering::Release);
        self.hub
            .get()
            .pollers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
        // Dropped without the GIL held by Python code in between: it only
        // unregisters from the doorbell.
        drop(self.wait.lock().unwrap_or_else(|e| e.into_inner()).take());
        if let Some(timer) = self.timer.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = timer.bind(py).call_method0(intern!(py, "cancel"));
        }
    }
}

#[pymethods]
impl RecvPoll {
    /// The future's done callback: a cancelled receive stops polling.
    fn on_done(&self, py: Python<'_>, _future: &Bound<'_, PyAny>) {
        self.finish(py);
    }

    /// The loop's timer: one last poll, then Timeout.
    fn expire(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        Self::poll(slf)?;
        let this = slf.get();
        let future = this.future.bind(py);
        if future.call_method0(intern!(py, "done"))?.is_truthy()? {
            return Ok(());
        }
        this.finish(py);
        let e = raise(
            py,
            "Timeout",
            format!(
                "sandbox {}: no message within {:?}",
                this.sandbox.name,
                this.timeout.unwrap_or_default()
            ),
            Some(&this.sandbox.name),
            None,
        );
        future.call_method1(intern!(py, "set_exception"), (e.value(py),))?;
        Ok(())
    }
}

/// `Sandbox.recv_async`: an `asyncio.Future` of the next message.
pub(crate) fn recv_async<'py>(
    py: Python<'py>,
    sandbox: &Arc<Shared>,
    timeout: Option<Duration>,
) -> PyResult<Bound<'py, PyAny>> {
    static GET_RUNNING_LOOP: GILOnceCell<Py<PyAny>> = GILOnceCell::new();
    let event_loop = GET_RUNNING_LOOP
        .get_or_try_init(py, || {
            py.import("asyncio")?
                .getattr("get_running_loop")
                .map(Bound::unbind)
        })?
        .bind(py)
        .call0()?;
    let hub = hub_for(py, &event_loop)?;
    let future = event_loop.call_method0(intern!(py, "create_future"))?;
    let id = hub.get().next_id.fetch_add(1, Ordering::Relaxed);
    let poller = Bound::new(
        py,
        RecvPoll {
            sandbox: sandbox.clone(),
            hub: hub.clone().unbind(),
            id,
            future: future.clone().unbind(),
            waker: Waker::from(Arc::new(HubWake {
                hub: hub.get().inner.clone(),
                id,
            })),
            wait: Mutex::new(None),
            done: AtomicBool::new(false),
            timer: Mutex::new(None),
            timeout,
        },
    )?;
    hub.get()
        .pollers
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(id, poller.clone().unbind());
    // The first poll now: a message already there (or one a guest on
    // this thread answers at once) costs no loop turn, and no callback.
    RecvPoll::poll(&poller)?;
    if poller.get().done.load(Ordering::Acquire) {
        return Ok(future);
    }
    future.call_method1(
        intern!(py, "add_done_callback"),
        (poller.getattr(intern!(py, "on_done"))?,),
    )?;
    if let Some(t) = timeout {
        let timer = event_loop.call_method1(
            intern!(py, "call_later"),
            (t.as_secs_f64(), poller.getattr(intern!(py, "expire"))?),
        )?;
        *poller.get().timer.lock().unwrap_or_else(|e| e.into_inner()) = Some(timer.unbind());
    }
    Ok(future)
}
