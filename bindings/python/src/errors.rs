//! The exceptions of the package, one per way a call can fail, each
//! carrying the sandbox's name, and the conversions from the runtime's
//! errors.

use super::*;

/// The exception classes, made at import (some have two bases).
pub(crate) struct Exceptions {
    pub(crate) base: Py<PyType>,
    pub(crate) by_name: Vec<(&'static str, Py<PyType>)>,
}

pub(crate) static EXCEPTIONS: GILOnceCell<Exceptions> = GILOnceCell::new();

/// (name, bases by name (`""`: ShmrtError), doc).
pub(crate) const EXCEPTION_TABLE: &[(&str, &[&str], &str)] = &[
    (
        "Timeout",
        &["", "TimeoutError"],
        "Nothing within the timeout given.",
    ),
    (
        "Deadline",
        &["Timeout"],
        "The guest ran past its deadline (the sandbox's timeout).",
    ),
    ("Trap", &[""], "The guest trapped."),
    ("OutOfFuel", &[""], "The guest used up its fuel."),
    (
        "MemoryLimit",
        &["", "MemoryError"],
        "The guest hit its memory budget.",
    ),
    (
        "SlotsExhausted",
        &[""],
        "No free slot while the guest freed none.",
    ),
    (
        "RefusedModule",
        &["", "ValueError"],
        "The module is invalid or refused.",
    ),
    (
        "PluginError",
        &[""],
        "A called function returned an error (`.code`).",
    ),
    (
        "Closed",
        &["", "EOFError"],
        "The guest has ended and everything it sent was read.",
    ),
    ("Stopped", &[""], "The host stopped the sandbox."),
    (
        "TooLarge",
        &["", "ValueError"],
        "A message larger than the largest slot.",
    ),
    (
        "ProtocolViolation",
        &[""],
        "The guest broke the shared-memory protocol.",
    ),
    (
        "Released",
        &["", "ValueError"],
        "The message (or view) was released.",
    ),
    (
        "Busy",
        &[""],
        "A received message is still held: release it first.",
    ),
    ("Joined", &[""], "The sandbox was joined or closed."),
];

pub(crate) fn exceptions(py: Python<'_>) -> &Exceptions {
    EXCEPTIONS
        .get(py)
        .expect("made when the module is imported")
}

pub(crate) fn make_exceptions(py: Python<'_>) -> PyResult<Exceptions> {
    let builtins = py.import("builtins")?;
    let type_ = builtins.getattr("type")?;
    let dict = PyDict::new(py);
    dict.set_item("__module__", "shmrt")?;
    dict.set_item(
        "__doc__",
        "An error of shmrt; `.sandbox` names the sandbox (None when there is none).",
    )?;
    let base: Bound<'_, PyType> = type_
        .call1((
            "ShmrtError",
            PyTuple::new(py, [builtins.getattr("Exception")?])?,
            dict,
        ))?
        .downcast_into()?;
    let mut by_name: Vec<(&'static str, Py<PyType>)> = Vec::new();
    for (name, bases, doc) in EXCEPTION_TABLE {
        let mut classes = Vec::new();
        for b in *bases {
            classes.push(match *b {
                "" => base.clone().into_any(),
                other => match by_name.iter().find(|(n, _)| *n == other) {
                    Some((_, t)) => t.bind(py).clone().into_any(),
                    None => builtins.getattr(other)?,
                },
            });
        }
        let dict = PyDict::new(py);
        dict.set_item("__module__", "shmrt")?;
        dict.set_item("__doc__", *doc)?;
        let class: Bound<'_, PyType> = type_
            .call1((*name, PyTuple::new(py, classes)?, dict))?
            .downcast_into()?;
        by_name.push((name, class.unbind()));
    }
    Ok(Exceptions {
        base: base.unbind(),
        by_name,
    })
}

/// An exception of class `name` (`ShmrtError` for an unknown one) with
/// `message`, its `.sandbox` and its `.code`.
pub(crate) fn raise(
    py: Python<'_>,
    name: &str,
    message: String,
    sandbox: Option<&str>,
    code: Option<i32>,
) -> PyErr {
    let ex = exceptions(py);
    let class = ex
        .by_name
        .iter()
        .find(|(n, _)| *n == name)
        .map_or(&ex.base, |(_, t)| t)
        .bind(py);
    match class.call1((message,)) {
        Ok(value) => {
            let _ = value.setattr("sandbox", sandbox);
            let _ = value.setattr("code", code);
            PyErr::from_value(value)
        }
        Err(e) => e,
    }
}

pub(crate) fn sandbox_error(py: Python<'_>, e: &SandboxError, sandbox: &str) -> PyErr {
    let name = match e {
        SandboxError::Trap { .. } => "Trap",
        SandboxError::OutOfFuel { .. } => "OutOfFuel",
        SandboxError::MemoryLimit { .. } => "MemoryLimit",
        SandboxError::Timeout { .. } => "Deadline",
        SandboxError::WouldBlock { .. } => "Timeout",
        SandboxError::Stopped { .. } => "Stopped",
        SandboxError::Closed { .. } | SandboxError::Unanswered { .. } => "Closed",
        SandboxError::TooLarge { .. } => "TooLarge",
        SandboxError::SlotsExhausted { .. } => "SlotsExhausted",
        SandboxError::Compile { .. }
        | SandboxError::Refused { .. }
        | SandboxError::Instantiate { .. }
        | SandboxError::WindowTooLarge { .. }
        | SandboxError::Config(_) => "RefusedModule",
        SandboxError::Protocol { .. } => "ProtocolViolation",
        _ => "ShmrtError",
    };
    raise(py, name, e.to_string(), Some(sandbox), None)
}

pub(crate) fn held_error(py: Python<'_>, e: HeldError, sandbox: &str) -> PyErr {
    match &e {
        HeldError::Sandbox(s) => sandbox_error(py, s, sandbox),
        HeldError::Call(CallError::Sandbox(s)) => sandbox_error(py, s, sandbox),
        HeldError::Call(CallError::Plugin { code, .. }) => {
            raise(py, "PluginError", e.to_string(), Some(sandbox), Some(*code))
        }
        HeldError::Call(CallError::Timeout { .. }) => {
            raise(py, "Timeout", e.to_string(), Some(sandbox), None)
        }
        HeldError::Call(CallError::BadName { .. } | CallError::Reentrant { .. }) => {
            PyValueError::new_err(e.to_string())
        }
        HeldError::Call(_) => raise(py, "ProtocolViolation", e.to_string(), Some(sandbox), None),
        HeldError::Joined { .. } => raise(py, "Joined", e.to_string(), Some(sandbox), None),
        HeldError::Busy { .. } => raise(py, "Busy", e.to_string(), Some(sandbox), None),
        HeldError::Released { .. } => raise(py, "Released", e.to_string(), Some(sandbox), None),
        HeldError::NotSent { .. } => PyBufferError::new_err(e.to_string()),
    }
}
