//! The Python package `shmrt`: runtimes, plugins prepared once, sandboxes
//! with send (any bytes-like object, copied once into the segment), send
//! with a fill callback that writes in place, messages received as
//! read-only buffers over the guest's bytes (`numpy.frombuffer(msg)`
//! reads them in place), replies in place, calls by name, configuration
//! and Python host functions. Built on the C API crate's [`HeldSandbox`],
//! which keeps a received message until it is released and turns any
//! later access into an error.
//!
//! The GIL is released while a call blocks or runs a guest, and taken
//! again to run a Python host function. A blocking receive waits in short
//! slices and checks for signals between them, so Ctrl-C interrupts it.

use std::collections::BTreeMap;
use std::ffi::c_int;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use pyo3::exceptions::{PyBufferError, PyOSError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::GILOnceCell;
use pyo3::types::{PyBytes, PyDict, PyTuple, PyType};
use pyo3::{ffi, intern};
use shmrt::primitives::{SizeClass, SizeClasses};
use shmrt::{
    CallError, Execution, HostFnError, HostFunctions, RuntimeConfig, SandboxError, SandboxOptions,
    StopHandle,
};
use shmrt_capi::held::{HeldError, HeldSandbox};

mod aio;
mod errors;
mod message;
mod reserve;

use errors::*;
use message::*;
use reserve::Reservation;

/// How long one slice of a blocking receive waits before looking for
/// signals (Ctrl-C).
const SIGNAL_SLICE: Duration = Duration::from_millis(50);

/// A shmrt runtime: the engine, its linker and its epoch thread. One per
/// process is enough.
#[pyclass(module = "shmrt", frozen)]
struct Runtime {
    inner: Arc<shmrt::Runtime>,
}

#[pymethods]
impl Runtime {
    #[new]
    #[pyo3(signature = (*, fuel = false))]
    fn new(py: Python<'_>, fuel: bool) -> PyResult<Self> {
        let runtime = py
            .allow_threads(|| {
                shmrt::Runtime::with_config(RuntimeConfig {
                    fuel,
                    ..RuntimeConfig::default()
                })
            })
            .map_err(|e| sandbox_error(py, &e, "runtime"))?;
        Ok(Runtime {
            inner: Arc::new(runtime),
        })
    }

    /// Prepares a plugin from wasm bytes (binary or WAT) or a path.
    fn prepare(&self, py: Python<'_>, wasm: &Bound<'_, PyAny>) -> PyResult<Plugin> {
        let bytes: Vec<u8> = if let Ok(b) = wasm.downcast::<PyBytes>() {
            b.as_bytes().to_vec()
        } else if let Ok(path) = wasm.extract::<std::path::PathBuf>() {
            shmrt::read_module_file(&path).map_err(|e| sandbox_error(py, &e, "plugin"))?
        } else {
            return Err(PyTypeError::new_err("prepare takes wasm bytes or a path"));
        };
        let runtime = self.inner.clone();
        let plugin = py
            .allow_threads(|| runtime.prepare(&bytes))
            .map_err(|e| sandbox_error(py, &e, "plugin"))?;
        Ok(Plugin {
            runtime: self.inner.clone(),
            plugin,
        })
    }
}

/// A plugin compiled and checked once, to spawn sandboxes from.
#[pyclass(module = "shmrt", frozen)]
struct Plugin {
    runtime: Arc<shmrt::Runtime>,
    plugin: shmrt::Plugin,
}

fn execution_of(name: &str) -> PyResult<Execution> {
    name.parse().map_err(PyValueError::new_err)
}

fn seconds(t: Option<f64>, what: &str) -> PyResult<Option<Duration>> {
    t.map(|s| {
        Duration::try_from_secs_f64(s)
            .map_err(|_| PyValueError::new_err(format!("{what} must be a number of seconds >= 0")))
    })
    .transpose()
}

/// A Python callable as a host function: called with the input as
/// `bytes`, returns bytes-like (or None for no output); an exception
/// becomes an error for the guest (`code` from an int attribute `code`,
/// else 1).
fn host_function(
    name: String,
    f: Py<PyAny>,
) -> impl Fn(shmrt::SharedBytes<'_>, &mut shmrt::HostOutput<'_>) -> Result<(), HostFnError>
+ Send
+ Sync
+ 'static {
    move |input, out| {
        let input = input.to_vec();
        Python::with_gil(|py| {
            let result = f.bind(py).call1((PyBytes::new(py, &input),)).and_then(|r| {
                if r.is_none() {
                    return Ok(());
                }
                write_buffer(&r, |bytes| out.write(bytes))
            });
            result.map_err(|e| {
                let code = e
                    .value(py)
                    .getattr(intern!(py, "code"))
                    .ok()
                    .and_then(|c| c.extract::<i32>().ok())
                    .filter(|&c| c != 0)
                    .unwrap_or(1);
                HostFnError::new(code, format!("host function `{name}` raised {e}"))
            })
        })
    }
}

/// A contiguous buffer of `obj` (any bytes-like object: bytes, bytearray,
/// memoryview, a numpy array), held until drop.
struct Buffer {
    view: ffi::Py_buffer,
}

impl Buffer {
    fn get(obj: &Bound<'_, PyAny>) -> PyResult<Self> {
        // SAFETY: a zeroed `Py_buffer` is what `PyObject_GetBuffer` fills.
        let mut view: ffi::Py_buffer = unsafe { std::mem::zeroed() };
        // SAFETY: `obj` is a live object (we hold the GIL); on success the
        // buffer is ours until `PyBuffer_Release` (in `drop`).
        if unsafe { ffi::PyObject_GetBuffer(obj.as_ptr(), &mut view, ffi::PyBUF_C_CONTIGUOUS) } != 0
        {
            return Err(PyErr::fetch(obj.py()));
        }
        Ok(Buffer { view })
    }

    fn ptr_len(&self) -> (*const u8, usize) {
        (self.view.buf as *const u8, self.view.len.max(0) as usize)
    }

    /// The bytes. The exporter keeps them (and cannot resize them) while
    /// the buffer is held.
    fn as_slice(&self) -> &[u8] {
        let (ptr, len) = self.ptr_len();
        if len == 0 {
            return &[];
        }
        // SAFETY: a C-contiguous buffer of `len` bytes at `buf`, held
        // (so kept alive and unresized) as long as `self`.
        unsafe { std::slice::from_raw_parts(ptr, len) }
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        // SAFETY: got by `PyObject_GetBuffer`, released once. Dropped with
        // the GIL held: every `Buffer` lives inside a GIL-holding scope
        // (the `allow_threads` closures only borrow its bytes).
        unsafe { ffi::PyBuffer_Release(&mut self.view) };
    }
}

// SAFETY: only its bytes are read on another thread (inside
// `allow_threads`), while the GIL holder that made it waits; it is
// released on that holder's thread.
unsafe impl Send for Buffer {}
// SAFETY: as for `Send`: shared reads of bytes kept alive by the export.
unsafe impl Sync for Buffer {}

fn write_buffer(obj: &Bound<'_, PyAny>, write: impl FnOnce(&[u8])) -> PyResult<()> {
    let buffer = Buffer::get(obj)?;
    write(buffer.as_slice());
    Ok(())
}

#[pymethods]
impl Plugin {
    /// Spawns a sandbox of this plugin. `execution`: "auto", "thread",
    /// "fiber" or "callback"; `timeout` and `slot_wait` in seconds;
    /// `slot_classes` a list of (max payload, count); `config` a dict of
    /// str to str; `host_functions` a dict of name to callable.
    #[pyo3(signature = (*, name = None, execution = "auto", timeout = None, fuel = None,
        max_memory = None, ring_capacity = None, slot_classes = None, slot_wait = Some(5.0),
        config = None, host_functions = None))]
    #[expect(clippy::too_many_arguments, reason = "Python keyword arguments")]
    fn spawn(
        &self,
        py: Python<'_>,
        name: Option<String>,
        execution: &str,
        timeout: Option<f64>,
        fuel: Option<u64>,
        max_memory: Option<usize>,
        ring_capacity: Option<u32>,
        slot_classes: Option<Vec<(u32, u32)>>,
        slot_wait: Option<f64>,
        config: Option<BTreeMap<String, String>>,
        host_functions: Option<BTreeMap<String, Py<PyAny>>>,
    ) -> PyResult<Sandbox> {
        let mut options = SandboxOptions {
            execution: execution_of(execution)?,
            timeout: seconds(timeout, "timeout")?,
            fuel,
            max_memory,
            slot_wait: seconds(slot_wait, "slot_wait")?,
            ..SandboxOptions::default()
        };
        if let Some(name) = name {
            options.name = name;
        }
        if let Some(n) = ring_capacity {
            options.segment.ring_capacity = n;
        }
        if let Some(classes) = slot_classes {
            let classes: Vec<SizeClass> = classes
                .into_iter()
                .map(|(p, c)| SizeClass::for_payload(p, c))
                .collect::<Result<_, _>>()
                .map_err(|e| PyValueError::new_err(format!("slot_classes: {e}")))?;
            options.segment.size_classes = SizeClasses::new(&classes)
                .map_err(|e| PyValueError::new_err(format!("slot_classes: {e}")))?;
        }
        if let Some(config) = config {
            options.config = Arc::new(config);
        }
        if let Some(functions) = host_functions {
            let mut defined = HostFunctions::new();
            for (name, f) in functions {
                if !f.bind(py).is_callable() {
                    return Err(PyTypeError::new_err(format!(
                        "host function `{name}` is not callable"
                    )));
                }
                defined.define(name.clone(), host_function(name, f));
            }
            options.host_functions = Some(Arc::new(defined));
        }
        let name = options.name.clone();
        let (runtime, plugin) = (self.runtime.clone(), self.plugin.clone());
        let sandbox = py
            .allow_threads(|| runtime.spawn_plugin(&plugin, options))
            .map_err(|e| sandbox_error(py, &e, &name))?;
        let held = HeldSandbox::new(sandbox);
        Ok(Sandbox {
            inner: Arc::new(Shared {
                name: held.name().to_owned(),
                stop: held.stop_handle().clone(),
                window: held.window(),
                execution: held.execution().name(),
                exports: AtomicUsize::new(0),
                owner: AtomicU64::new(0),
                state: Mutex::new(held),
            }),
        })
    }
}

/// What a sandbox and its messages share.
struct Shared {
    name: String,
    stop: StopHandle,
    window: (usize, usize),
    execution: &'static str,
    /// Buffers exported of the held message: while any lives, the
    /// message can not be released (nor the sandbox joined).
    exports: AtomicUsize,
    /// The thread holding `state` (0: none), to refuse a host function
    /// that uses the sandbox whose guest called it.
    owner: AtomicU64,
    state: Mutex<HeldSandbox>,
}

fn thread_token() -> u64 {
    thread_local!(static TOKEN: u64 = {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        NEXT.fetch_add(1, Ordering::Relaxed)
    });
    TOKEN.with(|t| *t)
}

/// The sandbox's state, locked for this thread.
struct Locked<'a> {
    shared: &'a Shared,
    guard: MutexGuard<'a, HeldSandbox>,
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        // Relaxed: only compared with this thread's own token.
        self.shared.owner.store(0, Ordering::Relaxed);
    }
}

impl Shared {
    /// Locks the state; an error if this thread holds it already (a host
    /// function of this sandbox using it).
    fn lock(&self) -> Result<Locked<'_>, String> {
        let me = thread_token();
        // Relaxed: a thread only ever finds its own token here if it
        // stored it itself.
        if self.owner.load(Ordering::Relaxed) == me {
            return Err(format!(
                "sandbox {}: a host function can not use the sandbox whose guest called it",
                self.name
            ));
        }
        let guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.owner.store(me, Ordering::Relaxed);
        Ok(Locked {
            shared: self,
            guard,
        })
    }

    /// Locks the state while holding the GIL (for callbacks into Python
    /// under the lock), letting the GIL go between tries so that a
    /// thread that holds the lock and waits for a host function (which
    /// needs the GIL) can go on.
    fn lock_with_gil(&self, py: Python<'_>) -> PyResult<Locked<'_>> {
        let me = thread_token();
        if self.owner.load(Ordering::Relaxed) == me {
            return Err(PyValueError::new_err(format!(
                "sandbox {}: a host function can not use the sandbox whose guest called it",
                self.name
            )));
        }
        loop {
            match self.state.try_lock() {
                Ok(guard) => {
                    self.owner.store(me, Ordering::Relaxed);
                    return Ok(Locked {
                        shared: self,
                        guard,
                    });
                }
                Err(std::sync::TryLockError::Poisoned(e)) => {
                    self.owner.store(me, Ordering::Relaxed);
                    return Ok(Locked {
                        shared: self,
                        guard: e.into_inner(),
                    });
                }
                Err(std::sync::TryLockError::WouldBlock) => {
                    py.allow_threads(|| std::thread::sleep(Duration::from_micros(50)));
                }
            }
        }
    }

    /// Runs `f` on the state without the GIL.
    fn run<R: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut HeldSandbox) -> Result<R, HeldError> + Send,
    ) -> PyResult<R> {
        let result = py.allow_threads(|| {
            let mut locked = self.lock().map_err(Err)?;
            f(&mut locked.guard).map_err(Ok)
        });
        result.map_err(|e| match e {
            Ok(e) => held_error(py, e, &self.name),
            Err(message) => PyValueError::new_err(message),
        })
    }

    fn exported_error(&self, py: Python<'_>, what: &str) -> PyErr {
        let _ = py;
        PyBufferError::new_err(format!(
            "sandbox {}: a view of the received message is still alive, so it can not be \
             released for {what}: delete the arrays and memoryviews made from it first",
            self.name
        ))
    }
}

/// A running sandbox.
#[pyclass(module = "shmrt", frozen)]
struct Sandbox {
    inner: Arc<Shared>,
}

#[pymethods]
impl Sandbox {
    /// The sandbox's name.
    #[getter]
    fn name(&self) -> &str {
        &self.inner.name
    }

    /// Where the guest runs: "thread", "fiber" or "callback".
    #[getter]
    fn execution(&self) -> &str {
        self.inner.execution
    }

    /// (address, length) of the segment window in this process: every
    /// message received and every payload written in place lies inside.
    fn window(&self) -> (usize, usize) {
        self.inner.window
    }

    /// Sends a copy of any bytes-like object (one copy, straight into the
    /// ring or a slot), waiting for room as long as the guest runs; or
    /// sends a `Reservation` of this sandbox in place (no copy).
    fn send(&self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        if let Ok(r) = data.downcast::<Reservation>() {
            return reserve::commit(py, r, &self.inner);
        }
        let buffer = Buffer::get(data)?;
        let bytes = buffer.as_slice();
        self.inner.run(py, |h| h.send(bytes))
    }

    /// Sends a copy if there is room now; whether it was sent.
    fn try_send(&self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<bool> {
        if data.downcast::<Reservation>().is_ok() {
            return Err(PyTypeError::new_err(
                "try_send copies bytes; send a Reservation with send(r)",
            ));
        }
        let buffer = Buffer::get(data)?;
        let bytes = buffer.as_slice();
        self.inner.run(py, |h| h.try_send(bytes))
    }

    /// Reserves `n` bytes in the ring or a slot and calls `fill(view)`
    /// with a writable buffer over them (`numpy.frombuffer(view, ...)`
    /// fills them in place); commits when `fill` returns. Views of it
    /// must not outlive `fill`: if one does, nothing is sent
    /// (BufferError).
    fn send_with(&self, py: Python<'_>, n: usize, fill: &Bound<'_, PyAny>) -> PyResult<()> {
        let inner = &self.inner;
        let fill = fill.clone().unbind();
        let mut locked = inner.lock_with_gil(py)?;
        let held: &mut HeldSandbox = &mut locked.guard;
        let mut raised = None;
        // The GIL is let go while the send waits for room: a guest on a
        // thread of its own may be calling a Python host function, and only
        // once it returns does the guest free room. It is taken again to
        // run `fill`, once the bytes are reserved.
        let result = py.allow_threads(|| {
            held.send_with(n, |mut bytes| {
                Python::with_gil(|py| {
                    let view = match Bound::new(
                        py,
                        SlotView {
                            ptr: bytes.as_mut_ptr() as usize,
                            len: bytes.len(),
                            exports: 0,
                            open: true,
                        },
                    ) {
                        Ok(v) => v,
                        Err(e) => {
                            raised = Some(e);
                            return Err("the view could not be made".into());
                        }
                    };
                    let called = fill.bind(py).call1((view.clone(),));
                    let mut v = view.borrow_mut();
                    v.open = false;
                    match called {
                        Err(e) => {
                            raised = Some(e);
                            Err("fill raised".into())
                        }
                        Ok(_) if v.exports > 0 => Err(
                            "a view of the reserved bytes outlived fill (delete the arrays and \
                             memoryviews made from it before fill returns)"
                                .into(),
                        ),
                        Ok(_) => Ok(()),
                    }
                })
            })
        });
        drop(locked);
        if let Some(e) = raised {
            return Err(e);
        }
        result.map_err(|e| held_error(py, e, &inner.name))
    }

    /// Reserves `n` bytes in a slot of the segment and returns them as a
    /// writable buffer object (`numpy.frombuffer(r, dtype=...)` fills
    /// them in place), sent by `send(r)` or by the exit of
    /// `with sandbox.reserve(n) as r:`, given back unsent by
    /// `r.abandon()` or an exception in the `with` body (see
    /// `Reservation`). Always a slot, also for a few bytes. Several may be
    /// open at once, each holding a slot: at most half of a size class's
    /// slots are the host's at a time, so one more than that waits, and
    /// ends with SlotsExhausted after the sandbox's `slot_wait` if none
    /// comes back.
    ///
    /// Waits (without the GIL) for a free slot as a send does, up to
    /// `timeout` seconds (None: as long as the guest frees slots; Timeout
    /// when it passes). TooLarge, naming the sizes, when no slot class
    /// holds `n` bytes; Closed once the guest has ended.
    #[pyo3(signature = (n, timeout = None))]
    fn reserve(&self, py: Python<'_>, n: usize, timeout: Option<f64>) -> PyResult<Reservation> {
        let t = seconds(timeout, "timeout")?;
        let slot = self.inner.run(py, |h| h.reserve(n, t))?;
        Ok(Reservation::new(self.inner.clone(), slot))
    }

    /// Awaitable: the next message, as `recv` gives it, without blocking
    /// the event loop and without a thread: the loop's own thread polls
    /// the sandbox when the runtime wakes it (a guest on the host's thread
    /// runs inside those polls). `timeout` in seconds (Timeout when none
    /// came). Must be called with an asyncio loop running. Cancelling it
    /// (`task.cancel()`, `asyncio.wait_for`) loses nothing: a message is
    /// taken only by the poll that hands it out. As with `recv`, a
    /// message still held from before is released first.
    #[pyo3(signature = (timeout = None))]
    fn recv_async<'py>(
        &self,
        py: Python<'py>,
        timeout: Option<f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let t = seconds(timeout, "timeout")?;
        aio::recv_async(py, &self.inner, t)
    }

    /// The next message, waiting up to `timeout` seconds (None: as long
    /// as it takes; Timeout when none came). A message still held from
    /// before is released first (BufferError if a view of it lives).
    #[pyo3(signature = (timeout = None))]
    fn recv(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Message> {
        let limit = seconds(timeout, "timeout")?;
        let until = limit.and_then(|l| Instant::now().checked_add(l));
        loop {
            let slice = match until {
                Some(u) => u
                    .saturating_duration_since(Instant::now())
                    .min(SIGNAL_SLICE),
                None => SIGNAL_SLICE,
            };
            if let Some(msg) = self.recv_once(py, Some(slice))? {
                return Ok(msg);
            }
            if until.is_some_and(|u| Instant::now() >= u) {
                return Err(raise(
                    py,
                    "Timeout",
                    format!(
                        "sandbox {}: no message within {:?}",
                        self.inner.name,
                        limit.unwrap_or_default()
                    ),
                    Some(&self.inner.name),
                    None,
                ));
            }
            py.check_signals()?;
        }
    }

    /// The next message if one is there now, else None.
    fn try_recv(&self, py: Python<'_>) -> PyResult<Option<Message>> {
        self.recv_once(py, Some(Duration::ZERO))
    }

    /// Raises host goodbye: the guest drains what is queued and returns.
    fn goodbye(&self, py: Python<'_>) -> PyResult<()> {
        self.inner.run(py, |h| h.goodbye())
    }

    /// Asks the guest to stop; callable from any thread (and a signal
    /// handler) while another blocks in this sandbox.
    fn stop(&self) {
        self.inner.stop.stop();
    }

    /// Waits for the guest to return: its exit status (say goodbye first,
    /// or it may wait for messages forever).
    fn join(&self, py: Python<'_>) -> PyResult<i32> {
        if self.inner.exports.load(Ordering::Acquire) > 0 {
            return Err(self.inner.exported_error(py, "the join"));
        }
        self.inner.run(py, |h| h.join())
    }

    /// Says goodbye, drops what the guest still sends, and joins it,
    /// stopping it after `timeout` seconds.
    #[pyo3(signature = (timeout = 10.0))]
    fn close(&self, py: Python<'_>, timeout: f64) -> PyResult<i32> {
        if self.inner.exports.load(Ordering::Acquire) > 0 {
            return Err(self.inner.exported_error(py, "the close"));
        }
        let t = seconds(Some(timeout), "timeout")?.unwrap_or_default();
        self.inner.run(py, |h| h.close(t))
    }

    /// Calls the plugin's exported function `name` with `data`: its
    /// output as bytes (PluginError with `.code` if it failed).
    #[pyo3(signature = (name, data = None, timeout = None))]
    fn call<'py>(
        &self,
        py: Python<'py>,
        name: &str,
        data: Option<&Bound<'py, PyAny>>,
        timeout: Option<f64>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let t = seconds(timeout, "timeout")?;
        let buffer = data.map(Buffer::get).transpose()?;
        let input = buffer.as_ref().map_or(&[][..], Buffer::as_slice);
        let out = self.inner.run(py, |h| h.call(name, input, t))?;
        Ok(PyBytes::new(py, &out))
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, PyTuple>) -> PyResult<bool> {
        match self.close(py, 10.0) {
            Ok(_) => Ok(false),
            Err(e)
                if e.is_instance(
                    py,
                    exceptions(py)
                        .by_name
                        .iter()
                        .find(|(n, _)| *n == "Joined")
                        .map(|(_, t)| t.bind(py))
                        .expect("made at import"),
                ) =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    fn __repr__(&self) -> String {
        format!(
            "<shmrt.Sandbox {} ({})>",
            self.inner.name, self.inner.execution
        )
    }
}

impl Sandbox {
    fn recv_once(&self, py: Python<'_>, wait: Option<Duration>) -> PyResult<Option<Message>> {
        self.inner
            .take_message(py, |h| h.recv(wait).map(std::task::Poll::from))
    }
}

impl Shared {
    /// Releases the message held (BufferError if a view of it lives), then
    /// lets `get` receive the next one (without the GIL): the `Message`,
    /// or `None` when `get` found none.
    fn take_message(
        self: &Arc<Self>,
        py: Python<'_>,
        get: impl FnOnce(&mut HeldSandbox) -> Result<std::task::Poll<Option<u64>>, HeldError> + Send,
    ) -> PyResult<Option<Message>> {
        let inner = self;
        let exported = inner.exports.load(Ordering::Acquire) > 0;
        let got = inner.run(py, |h| {
            if let Some(g) = h.held_generation() {
                if exported {
                    return Ok(Err(()));
                }
                h.release(g)?;
            }
            let std::task::Poll::Ready(Some(generation)) = get(h)? else {
                return Ok(Ok(None));
            };
            let bytes = h.bytes(generation)?;
            Ok(Ok(Some((generation, bytes.as_ptr() as usize, bytes.len()))))
        })?;
        match got {
            Err(()) => Err(inner.exported_error(py, "the next message")),
            Ok(None) => Ok(None),
            Ok(Some((generation, ptr, len))) => Ok(Some(Message {
                sandbox: inner.clone(),
                generation,
                ptr,
                len,
                exports: 0,
                released: false,
            })),
        }
    }
}

/// WebAssembly sandboxes whose messages stay in place.
#[pymodule]
#[pyo3(name = "shmrt")]
fn shmrt_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    let ex = EXCEPTIONS.get_or_try_init(py, || make_exceptions(py))?;
    m.add("ShmrtError", ex.base.bind(py))?;
    for (name, class) in &ex.by_name {
        m.add(*name, class.bind(py))?;
    }
    m.add_class::<Runtime>()?;
    m.add_class::<Plugin>()?;
    m.add_class::<Sandbox>()?;
    m.add_class::<Message>()?;
    m.add_class::<SlotView>()?;
    m.add_class::<Reservation>()?;
    Ok(())
}
