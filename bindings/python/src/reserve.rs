//! `Sandbox.reserve(n)`: a slot of the segment as a writable buffer object
//! that the caller fills in place (numpy, memoryview) and that is sent by
//! `Sandbox.send(r)` or the context's exit, or given back unsent.

use super::*;
use shmrt::ReservedSlot;

/// Where a reservation is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReserveState {
    Open,
    Sent,
    /// Given back (abandoned, or a send that failed).
    GivenBack,
}

/// `n` writable bytes in a slot of the segment, reserved by
/// `Sandbox.reserve(n)`: a buffer (`memoryview(r)`,
/// `numpy.frombuffer(r, dtype=...)` writes them in place). Sent by
/// `sandbox.send(r)` or by the exit of `with sandbox.reserve(n) as r:`;
/// given back unsent by `r.abandon()`, by an exception leaving the `with`
/// body, or when the object is collected. After it is sent or given back
/// any access raises `Released`.
///
/// It is sent only when no view of it lives (a numpy array or memoryview
/// made from it): after the send the slot is the guest's, and a live view
/// would later alias another message. `send(r)` with a view alive raises
/// BufferError and sends nothing (delete the views, then send again); the
/// `with` exit with a view alive gives the slot back and raises
/// BufferError. A slot given back while views of it live (abandon) is
/// freed when the last of them goes.
#[pyclass(module = "shmrt")]
pub(crate) struct Reservation {
    pub(crate) sandbox: Arc<Shared>,
    /// `None` once sent or freed.
    pub(crate) slot: Option<ReservedSlot>,
    pub(crate) ptr: usize,
    pub(crate) len: usize,
    pub(crate) exports: usize,
    pub(crate) state: ReserveState,
}

impl Reservation {
    pub(crate) fn new(sandbox: Arc<Shared>, mut slot: ReservedSlot) -> Self {
        let mut bytes = slot.bytes_mut();
        let (ptr, len) = (bytes.as_mut_ptr() as usize, bytes.len());
        Reservation {
            sandbox,
            slot: Some(slot),
            ptr,
            len,
            exports: 0,
            state: ReserveState::Open,
        }
    }

    fn check(&self, py: Python<'_>) -> PyResult<()> {
        let what = match self.state {
            ReserveState::Open => return Ok(()),
            ReserveState::Sent => "was sent (the slot is the guest's now)",
            ReserveState::GivenBack => "was given back unsent",
        };
        Err(raise(
            py,
            "Released",
            format!(
                "sandbox {}: the reservation of {} bytes {what}; reserve again for another \
                 message",
                self.sandbox.name, self.len
            ),
            Some(&self.sandbox.name),
            None,
        ))
    }

    /// Gives the slot back unsent; it is freed now, or when the last view
    /// of it goes.
    fn give_back(&mut self) {
        self.state = ReserveState::GivenBack;
        if self.exports == 0 {
            self.slot = None;
        }
    }

    fn exported_error(&self) -> PyErr {
        PyBufferError::new_err(format!(
            "sandbox {}: a view of the reserved bytes is still alive (a numpy array or \
             memoryview made from the reservation), so it can not be sent: once sent the slot \
             is the guest's, and the view would alias a later message; delete the views first",
            self.sandbox.name
        ))
    }
}

/// Sends reservation `r` through sandbox `to` (`Sandbox.send(r)`, the
/// context's exit).
pub(crate) fn commit(py: Python<'_>, r: &Bound<'_, Reservation>, to: &Arc<Shared>) -> PyResult<()> {
    let slot = {
        let mut this = r.borrow_mut();
        if !Arc::ptr_eq(&this.sandbox, to) {
            return Err(PyValueError::new_err(format!(
                "sandbox {}: the reservation is a slot of sandbox {}'s segment; send it with \
                 that sandbox (nothing was sent)",
                to.name, this.sandbox.name
            )));
        }
        this.check(py)?;
        if this.exports > 0 {
            return Err(this.exported_error());
        }
        // Sent, or given back by the failed send: done either way.
        this.state = ReserveState::Sent;
        match this.slot.take() {
            Some(slot) => slot,
            None => unreachable!("an open reservation holds its slot"),
        }
    };
    let sent = to.run(py, |h| h.send_reserved(slot));
    if sent.is_err() {
        r.borrow_mut().state = ReserveState::GivenBack;
    }
    sent
}

#[pymethods]
impl Reservation {
    fn __len__(&self, py: Python<'_>) -> PyResult<usize> {
        self.check(py)?;
        Ok(self.len)
    }

    /// The address of the first byte (inside `Sandbox.window()`).
    #[getter]
    fn address(&self, py: Python<'_>) -> PyResult<usize> {
        self.check(py)?;
        Ok(self.ptr)
    }

    /// Whether it was sent or given back.
    #[getter]
    fn released(&self) -> bool {
        self.state != ReserveState::Open
    }

    /// Whether it was sent.
    #[getter]
    fn sent(&self) -> bool {
        self.state == ReserveState::Sent
    }

    /// Gives the slot back unsent (nothing is sent). With views of it
    /// still alive, the slot is freed when the last of them goes. Raises
    /// `Released` if it was sent already; a second abandon does nothing.
    fn abandon(&mut self, py: Python<'_>) -> PyResult<()> {
        match self.state {
            ReserveState::Open => {
                self.give_back();
                Ok(())
            }
            ReserveState::GivenBack => Ok(()),
            ReserveState::Sent => self.check(py),
        }
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    /// Sends it when the body ended normally (BufferError, and the slot
    /// given back, if a view of it is still alive); gives it back when the
    /// body raised.
    fn __exit__(
        slf: &Bound<'_, Self>,
        exc_type: &Bound<'_, PyAny>,
        _exc: &Bound<'_, PyAny>,
        _tb: &Bound<'_, PyAny>,
    ) -> PyResult<bool> {
        let py = slf.py();
        let to = {
            let mut this = slf.borrow_mut();
            if this.state != ReserveState::Open {
                return Ok(false);
            }
            if !exc_type.is_none() {
                this.give_back();
                return Ok(false);
            }
            if this.exports > 0 {
                this.give_back();
                return Err(this.exported_error());
            }
            this.sandbox.clone()
        };
        commit(py, slf, &to)?;
        Ok(false)
    }

    /// Exports the bytes writable, in place.
    ///
    /// # Safety
    ///
    /// Called by Python with a `Py_buffer` to fill.
    unsafe fn __getbuffer__(
        mut slf: PyRefMut<'_, Self>,
        view: *mut ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        let py = slf.py();
        slf.check(py)?;
        // SAFETY: `view` is the caller's to fill; the bytes are the
        // reservation's slot, kept (not sent, not freed) while `exports`
        // > 0, in a segment kept mapped by the slot's token, which `obj`
        // (this object, increfed by FillInfo) holds.
        let rc = unsafe {
            ffi::PyBuffer_FillInfo(
                view,
                slf.as_ptr(),
                slf.ptr as *mut std::ffi::c_void,
                slf.len as ffi::Py_ssize_t,
                0,
                flags,
            )
        };
        if rc != 0 {
            return Err(PyErr::fetch(py));
        }
        slf.exports += 1;
        Ok(())
    }

    /// Ends an export; the last one of a reservation given back frees its
    /// slot.
    ///
    /// # Safety
    ///
    /// Called by Python for a buffer `__getbuffer__` filled.
    unsafe fn __releasebuffer__(mut slf: PyRefMut<'_, Self>, _view: *mut ffi::Py_buffer) {
        slf.exports -= 1;
        if slf.exports == 0 && slf.state == ReserveState::GivenBack {
            slf.slot = None;
        }
    }

    fn __repr__(&self) -> String {
        match self.state {
            ReserveState::Open => format!(
                "<shmrt.Reservation {} bytes in {}>",
                self.len, self.sandbox.name
            ),
            ReserveState::Sent => format!("<shmrt.Reservation sent, to {}>", self.sandbox.name),
            ReserveState::GivenBack => {
                format!("<shmrt.Reservation given back, of {}>", self.sandbox.name)
            }
        }
    }
}
