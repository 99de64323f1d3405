//! Messages received from the guest, read-only buffers over its bytes in
//! place until released, and the writable views of a fill callback.

use super::*;

/// A message from the guest, in place in the segment until released: a
/// read-only buffer (`memoryview(msg)`, `numpy.frombuffer(msg)`) over
/// bytes the guest could still write (copy what must not change). After
/// `release()` (or the context's exit, or the next `recv`), any access
/// raises `Released`.
#[pyclass(module = "shmrt")]
pub(crate) struct Message {
    pub(crate) sandbox: Arc<Shared>,
    pub(crate) generation: u64,
    pub(crate) ptr: usize,
    pub(crate) len: usize,
    pub(crate) exports: usize,
    pub(crate) released: bool,
}

impl Message {
    /// Whether the message is still held by its sandbox.
    fn check(&self, py: Python<'_>) -> PyResult<()> {
        let live = !self.released
            && self
                .sandbox
                .lock_with_gil(py)
                .is_ok_and(|l| l.guard.held_generation() == Some(self.generation));
        if live {
            Ok(())
        } else {
            Err(raise(
                py,
                "Released",
                format!(
                    "sandbox {}: message {} was released; keep a copy (bytes(msg)) if you need \
                     the bytes later",
                    self.sandbox.name, self.generation
                ),
                Some(&self.sandbox.name),
                None,
            ))
        }
    }
}

#[pymethods]
impl Message {
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

    /// Whether it was released.
    #[getter]
    fn released(&self, py: Python<'_>) -> bool {
        self.check(py).is_err()
    }

    /// A copy of the bytes.
    fn tobytes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        self.check(py)?;
        let guard = self.sandbox.lock_with_gil(py)?;
        let bytes = guard
            .guard
            .bytes(self.generation)
            .map_err(|e| held_error(py, e, &self.sandbox.name))?;
        PyBytes::new_with(py, bytes.len(), |out| {
            bytes.copy_to(out);
            Ok(())
        })
    }

    fn __bytes__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        self.tobytes(py)
    }

    /// Gives the bytes back to the guest. BufferError while a view of
    /// them (a memoryview, a numpy array) lives.
    fn release(&mut self, py: Python<'_>) -> PyResult<()> {
        if self.released {
            return Ok(());
        }
        if self.exports > 0 {
            return Err(self.sandbox.exported_error(py, "its release"));
        }
        self.released = true;
        let generation = self.generation;
        self.sandbox.run(py, move |h| {
            if h.held_generation() == Some(generation) {
                h.release(generation)?;
            }
            Ok(())
        })
    }

    /// Answers in place: `transform(view)` rewrites the writable view of
    /// the bytes and returns the reply's length (None: all of it). A
    /// message in a slot goes back in that slot. Released after.
    fn reply_in_place(&mut self, py: Python<'_>, transform: &Bound<'_, PyAny>) -> PyResult<()> {
        self.check(py)?;
        if self.exports > 0 {
            return Err(self.sandbox.exported_error(py, "a reply in place"));
        }
        self.released = true;
        let shared = self.sandbox.clone();
        let transform = transform.clone().unbind();
        let generation = self.generation;
        let mut locked = shared.lock_with_gil(py)?;
        let held: &mut HeldSandbox = &mut locked.guard;
        let mut raised = None;
        // As `Sandbox.send_with`: the GIL is let go while the reply waits
        // for ring room, and taken again to run `transform`.
        let result = py.allow_threads(|| {
            held.reply_in_place(generation, |mut bytes| {
                Python::with_gil(|py| {
                    let len = bytes.len();
                    let view = match Bound::new(
                        py,
                        SlotView {
                            ptr: bytes.as_mut_ptr() as usize,
                            len,
                            exports: 0,
                            open: true,
                        },
                    ) {
                        Ok(v) => v,
                        Err(e) => {
                            raised = Some(e);
                            return 0;
                        }
                    };
                    let called = transform.bind(py).call1((view.clone(),));
                    let mut v = view.borrow_mut();
                    v.open = false;
                    let n = match called {
                        Ok(r) if r.is_none() => len,
                        Ok(r) => r.extract::<usize>().unwrap_or(len),
                        Err(e) => {
                            raised = Some(e);
                            0
                        }
                    };
                    if v.exports > 0 {
                        raised = Some(PyBufferError::new_err(
                            "a view of the message outlived transform: it was sent as it was",
                        ));
                    }
                    n
                })
            })
        });
        drop(locked);
        if let Some(e) = raised {
            return Err(e);
        }
        result.map_err(|e| held_error(py, e, &shared.name))
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&mut self, py: Python<'_>, _args: &Bound<'_, PyTuple>) -> PyResult<bool> {
        self.release(py)?;
        Ok(false)
    }

    /// Exports the bytes read-only, in place.
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
        // SAFETY: `view` is the caller's to fill; the bytes stay held (the
        // message is not released while `exports` > 0, nor its sandbox
        // joined while the shared count is), and `obj` (this message,
        // increfed by FillInfo) keeps the sandbox alive.
        let rc = unsafe {
            ffi::PyBuffer_FillInfo(
                view,
                slf.as_ptr(),
                slf.ptr as *mut std::ffi::c_void,
                slf.len as ffi::Py_ssize_t,
                1,
                flags,
            )
        };
        if rc != 0 {
            return Err(PyErr::fetch(py));
        }
        slf.exports += 1;
        slf.sandbox.exports.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// Ends an export.
    ///
    /// # Safety
    ///
    /// Called by Python for a buffer `__getbuffer__` filled.
    unsafe fn __releasebuffer__(mut slf: PyRefMut<'_, Self>, _view: *mut ffi::Py_buffer) {
        slf.exports -= 1;
        slf.sandbox.exports.fetch_sub(1, Ordering::AcqRel);
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        match self.check(py) {
            Ok(()) => format!(
                "<shmrt.Message {} bytes from {}>",
                self.len, self.sandbox.name
            ),
            Err(_) => format!("<shmrt.Message released, from {}>", self.sandbox.name),
        }
    }
}

/// Writable bytes in the segment, lent to a callback (`Sandbox.send_with`,
/// `Message.reply_in_place`) for its duration only.
#[pyclass(module = "shmrt")]
pub(crate) struct SlotView {
    pub(crate) ptr: usize,
    pub(crate) len: usize,
    pub(crate) exports: usize,
    pub(crate) open: bool,
}

#[pymethods]
impl SlotView {
    fn __len__(&self) -> usize {
        self.len
    }

    /// Exports the bytes writable, in place, while the callback runs.
    ///
    /// # Safety
    ///
    /// Called by Python with a `Py_buffer` to fill.
    unsafe fn __getbuffer__(
        mut slf: PyRefMut<'_, Self>,
        view: *mut ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        if !slf.open {
            return Err(raise(
                slf.py(),
                "Released",
                "the view is valid only while its callback runs".into(),
                None,
                None,
            ));
        }
        // SAFETY: `view` is the caller's to fill; the bytes are reserved
        // for us while the callback runs (`open`), and an export that
        // outlives it makes the send or reply report it.
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
            return Err(PyErr::fetch(slf.py()));
        }
        slf.exports += 1;
        Ok(())
    }

    /// Ends an export.
    ///
    /// # Safety
    ///
    /// Called by Python for a buffer `__getbuffer__` filled.
    unsafe fn __releasebuffer__(mut slf: PyRefMut<'_, Self>, _view: *mut ffi::Py_buffer) {
        slf.exports -= 1;
    }
}
