//! Calls by name: the functions a plugin exports, and how each call's
//! input, output and error travel (see [`crate::exports!`] and
//! [`crate::plugin!`]).
//!
//! A call is a message whose payload starts with a call header
//! ([`shmrt_primitives::call_header`]): the function's name, a
//! correlation id, then the input. The SDK decodes the input into the
//! function's parameter type, runs it, and sends the reply (the output) or
//! the failure (a code and a message) with the call's id, so the host
//! matches it to its call even with many in flight.
//!
//! Input types ([`Input`]): `&[u8]` and `&str` are views of the message in
//! the segment (no copy); `Json<T>` decodes JSON with the `json` feature.
//! Output types ([`Output`]): bytes, text, integers (little-endian),
//! `()`, and `Vec`/`String`/`Json<T>` with `alloc`/`json`. Errors
//! ([`Failure`]): [`Error`] (a code and a message), `&'static str`, or a
//! type of yours that implements [`Failure`].

use core::cell::{Cell, UnsafeCell};
use core::fmt::{self, Write};

use shmrt_primitives::call_header::{
    CALL_HEADER_SIZE, CODE_BAD_INPUT, CODE_BAD_OUTPUT, CODE_MALFORMED_CALL, CODE_NO_SUCH_EXPORT,
    CallHeader, CallKind, FAILURE_CODE_SIZE, split_call,
};

use crate::{Message, Outbox, SendError};

/// Longest failure message sent to the host; the rest is cut.
pub const MAX_FAILURE_MESSAGE: usize = 1024;

/// One call of an exported function: its name, id and input, in place in
/// the request's message.
#[derive(Debug)]
pub struct Call<'m> {
    call_id: u64,
    name: &'m str,
    input: &'m [u8],
}

impl<'m> Call<'m> {
    /// The function's name.
    pub fn name(&self) -> &'m str {
        self.name
    }

    /// The correlation id the reply carries.
    pub fn id(&self) -> u64 {
        self.call_id
    }

    /// The input's bytes, in place in the segment.
    pub fn input(&self) -> &'m [u8] {
        self.input
    }

    /// Decodes the input as `I`, runs `f`, and replies with its output or
    /// its error. The error of a send is the only one returned: what `f`
    /// or the decoding gives goes to the host.
    pub fn run<I, O, E>(
        self,
        outbox: &mut Outbox,
        f: impl FnOnce(I) -> Result<O, E>,
    ) -> Result<(), SendError>
    where
        I: Input<'m>,
        O: Output,
        E: Failure,
    {
        let input = match I::from_input(self.input) {
            Ok(input) => input,
            Err(e) => {
                return self.fail(
                    outbox,
                    CODE_BAD_INPUT,
                    format_args!("input of `{}`: {e}", self.name),
                );
            }
        };
        match f(input) {
            Ok(output) => self.reply(outbox, output),
            Err(e) => self.fail(outbox, e.code(), format_args!("{e}")),
        }
    }

    /// Replies with `output` (copied once into the reply).
    pub fn reply(&self, outbox: &mut Outbox, output: impl Output) -> Result<(), SendError> {
        let sent = output.with_bytes(|bytes| {
            self.reply_with(outbox, bytes.len(), |out| out.copy_from_slice(bytes))
        });
        match sent {
            Ok(sent) => sent,
            Err(e) => self.fail(
                outbox,
                CODE_BAD_OUTPUT,
                format_args!("output of `{}`: {e}", self.name),
            ),
        }
    }

    /// Replies with `len` bytes of output written in place by `fill` (no
    /// copy); a reply larger than the largest message fails the call with
    /// [`CODE_BAD_OUTPUT`] instead.
    pub fn reply_with(
        &self,
        outbox: &mut Outbox,
        len: usize,
        fill: impl FnOnce(&mut [u8]),
    ) -> Result<(), SendError> {
        let total = CALL_HEADER_SIZE.saturating_add(len);
        if total > outbox.max_payload() as usize {
            return self.fail(
                outbox,
                CODE_BAD_OUTPUT,
                format_args!(
                    "the output of `{}` is {len} bytes, more than the largest message of this \
                     segment ({} bytes with its header): return less, or ask the host for larger \
                     slots",
                    self.name,
                    outbox.max_payload()
                ),
            );
        }
        let header = CallHeader {
            kind: CallKind::Reply,
            call_id: self.call_id,
        }
        .encode();
        outbox.answer_with(total, |out| {
            out[..CALL_HEADER_SIZE].copy_from_slice(&header);
            fill(&mut out[CALL_HEADER_SIZE..]);
        })
    }

    /// Fails the call: the host gets `code` and `message` (cut at
    /// [`MAX_FAILURE_MESSAGE`] bytes). Codes below 0 are the SDK's own.
    pub fn fail(
        &self,
        outbox: &mut Outbox,
        code: i32,
        message: fmt::Arguments<'_>,
    ) -> Result<(), SendError> {
        send_failure(outbox, self.call_id, code, message)
    }

    /// Fails a call of a name this plugin does not export, naming those it
    /// does.
    pub fn no_such_export(&self, outbox: &mut Outbox, exports: &[&str]) -> Result<(), SendError> {
        self.fail(
            outbox,
            CODE_NO_SUCH_EXPORT,
            format_args!(
                "this plugin exports no function `{}`; it exports: {}",
                self.name,
                Listed(exports)
            ),
        )
    }
}

struct Listed<'a>(&'a [&'a str]);

impl fmt::Display for Listed<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, name) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(name)?;
        }
        Ok(())
    }
}

fn send_failure(
    outbox: &mut Outbox,
    call_id: u64,
    code: i32,
    message: fmt::Arguments<'_>,
) -> Result<(), SendError> {
    let mut text = StackText::new();
    let _ = text.write_fmt(message);
    let text = text.as_bytes();
    let header = CallHeader {
        kind: CallKind::Failure,
        call_id,
    }
    .encode();
    let at = CALL_HEADER_SIZE + FAILURE_CODE_SIZE;
    outbox.answer_with(at + text.len(), |out| {
        out[..CALL_HEADER_SIZE].copy_from_slice(&header);
        out[CALL_HEADER_SIZE..at].copy_from_slice(&code.to_le_bytes());
        out[at..].copy_from_slice(text);
    })
}

/// Text formatted on the stack (no allocator), cut on a character
/// boundary at [`MAX_FAILURE_MESSAGE`] bytes.
struct StackText {
    buf: [u8; MAX_FAILURE_MESSAGE],
    len: usize,
}

impl StackText {
    fn new() -> Self {
        StackText {
            buf: [0; MAX_FAILURE_MESSAGE],
            len: 0,
        }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Write for StackText {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut n = s.len().min(MAX_FAILURE_MESSAGE - self.len);
        while !s.is_char_boundary(n) {
            n -= 1;
        }
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// Routes one message of an exporting plugin: a call goes to `route`
/// with its name; a malformed call is failed with [`CODE_MALFORMED_CALL`];
/// a message that is not a call at all is logged and dropped (the host
/// sent plain bytes to a plugin that answers calls by name).
pub fn dispatch(
    msg: Message<'_>,
    outbox: &mut Outbox,
    route: impl FnOnce(Call<'_>, &mut Outbox) -> Result<(), SendError>,
) -> Result<(), SendError> {
    let bytes = msg.as_bytes();
    match split_call(bytes) {
        Some(Ok(parts)) => route(
            Call {
                call_id: parts.call_id,
                name: parts.name,
                input: parts.input,
            },
            outbox,
        ),
        Some(Err(e)) => {
            // The id is still worth echoing when the header got that far.
            let call_id = bytes
                .get(8..16)
                .map_or(0, |b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
            send_failure(
                outbox,
                call_id,
                CODE_MALFORMED_CALL,
                format_args!("malformed call: {e}"),
            )
        }
        None => {
            crate::warn!(
                "a message of {} bytes is not a call and was dropped: this plugin answers calls \
                 by name (host: `Sandbox::call`, CLI: `shmrt run --call NAME`)",
                bytes.len()
            );
            Ok(())
        }
    }
}

/// Why an input could not be decoded.
#[derive(Debug)]
#[non_exhaustive]
pub enum InputError {
    /// The function takes text and the input is not UTF-8.
    NotUtf8 {
        /// Bytes of valid UTF-8 before the first invalid one.
        valid_up_to: usize,
    },
    /// The function takes a fixed number of bytes.
    Length {
        /// Bytes the type takes.
        expected: usize,
        /// Bytes the input has.
        got: usize,
    },
    /// The input is not the JSON of the function's parameter type.
    #[cfg(feature = "json")]
    Json(serde_json::Error),
}

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InputError::NotUtf8 { valid_up_to } => {
                write!(f, "not UTF-8 text (valid up to byte {valid_up_to})")
            }
            InputError::Length { expected, got } => {
                write!(f, "{got} bytes where {expected} are expected")
            }
            #[cfg(feature = "json")]
            InputError::Json(e) => write!(f, "not the expected JSON: {e}"),
        }
    }
}

/// A type an exported function takes, decoded from the call's input.
pub trait Input<'m>: Sized {
    /// Decodes the input (bytes in place in the segment).
    fn from_input(bytes: &'m [u8]) -> Result<Self, InputError>;
}

impl<'m> Input<'m> for &'m [u8] {
    fn from_input(bytes: &'m [u8]) -> Result<Self, InputError> {
        Ok(bytes)
    }
}

impl<'m> Input<'m> for &'m str {
    fn from_input(bytes: &'m [u8]) -> Result<Self, InputError> {
        core::str::from_utf8(bytes).map_err(|e| InputError::NotUtf8 {
            valid_up_to: e.valid_up_to(),
        })
    }
}

impl Input<'_> for () {
    fn from_input(_: &[u8]) -> Result<Self, InputError> {
        Ok(())
    }
}

macro_rules! le_integers {
    ($($t:ty),*) => {$(
        impl Input<'_> for $t {
            fn from_input(bytes: &[u8]) -> Result<Self, InputError> {
                let arr = bytes.try_into().map_err(|_| InputError::Length {
                    expected: size_of::<$t>(),
                    got: bytes.len(),
                })?;
                Ok(<$t>::from_le_bytes(arr))
            }
        }

        impl Output for $t {
            fn with_bytes<R>(self, f: impl FnOnce(&[u8]) -> R) -> Result<R, OutputError> {
                Ok(f(&self.to_le_bytes()))
            }
        }
    )*};
}

le_integers!(u32, i32, u64, i64, f64);

/// Why an output could not be encoded.
#[derive(Debug)]
#[non_exhaustive]
pub enum OutputError {
    /// The value has no JSON form (a map with keys that are not strings).
    #[cfg(feature = "json")]
    Json(serde_json::Error),
}

impl fmt::Display for OutputError {
    fn fmt(&self, _f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            #[cfg(feature = "json")]
            OutputError::Json(ref e) => write!(_f, "cannot be written as JSON: {e}"),
        }
    }
}

/// A type an exported function returns, sent as the reply's bytes.
pub trait Output {
    /// Gives `f` the bytes of the output.
    fn with_bytes<R>(self, f: impl FnOnce(&[u8]) -> R) -> Result<R, OutputError>;
}

impl Output for &[u8] {
    fn with_bytes<R>(self, f: impl FnOnce(&[u8]) -> R) -> Result<R, OutputError> {
        Ok(f(self))
    }
}

impl Output for &str {
    fn with_bytes<R>(self, f: impl FnOnce(&[u8]) -> R) -> Result<R, OutputError> {
        Ok(f(self.as_bytes()))
    }
}

impl<const N: usize> Output for [u8; N] {
    fn with_bytes<R>(self, f: impl FnOnce(&[u8]) -> R) -> Result<R, OutputError> {
        Ok(f(&self))
    }
}

impl Output for () {
    fn with_bytes<R>(self, f: impl FnOnce(&[u8]) -> R) -> Result<R, OutputError> {
        Ok(f(&[]))
    }
}

#[cfg(feature = "alloc")]
impl Output for alloc::vec::Vec<u8> {
    fn with_bytes<R>(self, f: impl FnOnce(&[u8]) -> R) -> Result<R, OutputError> {
        Ok(f(&self))
    }
}

#[cfg(feature = "alloc")]
impl Output for alloc::string::String {
    fn with_bytes<R>(self, f: impl FnOnce(&[u8]) -> R) -> Result<R, OutputError> {
        Ok(f(self.as_bytes()))
    }
}

#[cfg(feature = "alloc")]
impl<'m> Input<'m> for alloc::vec::Vec<u8> {
    fn from_input(bytes: &'m [u8]) -> Result<Self, InputError> {
        Ok(bytes.to_vec())
    }
}

#[cfg(feature = "alloc")]
impl<'m> Input<'m> for alloc::string::String {
    fn from_input(bytes: &'m [u8]) -> Result<Self, InputError> {
        <&str>::from_input(bytes).map(alloc::string::String::from)
    }
}

/// JSON input or output (the `json` feature): `fn f(Json(req):
/// Json<Request>) -> Result<Json<Report>, Error>`. Input is parsed in place
/// (borrowed `&str` fields point into the segment).
#[cfg(feature = "json")]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Json<T>(pub T);

#[cfg(feature = "json")]
impl<'m, T: serde::Deserialize<'m>> Input<'m> for Json<T> {
    fn from_input(bytes: &'m [u8]) -> Result<Self, InputError> {
        serde_json::from_slice(bytes)
            .map(Json)
            .map_err(InputError::Json)
    }
}

#[cfg(feature = "json")]
impl<T: serde::Serialize> Output for Json<T> {
    fn with_bytes<R>(self, f: impl FnOnce(&[u8]) -> R) -> Result<R, OutputError> {
        let bytes = serde_json::to_vec(&self.0).map_err(OutputError::Json)?;
        Ok(f(&bytes))
    }
}

/// An error an exported function returns: the host gets its code and its
/// message (`Display`), as `CallError::Plugin { code, message }`.
pub trait Failure: fmt::Display {
    /// The code the host gets: 1 unless the type says; below 0 is the
    /// SDK's own.
    fn code(&self) -> i32 {
        1
    }
}

/// A plugin's error: a code (1 and up) and a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    code: i32,
    message: Text,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Text {
    Static(&'static str),
    #[cfg(feature = "alloc")]
    Owned(alloc::string::String),
}

impl Error {
    /// An error with `code` and a fixed `message`.
    pub const fn new(code: i32, message: &'static str) -> Self {
        Error {
            code,
            message: Text::Static(message),
        }
    }

    /// An error with `code` and a formatted `message` (the `alloc`
    /// feature).
    #[cfg(feature = "alloc")]
    pub fn msg(code: i32, message: impl fmt::Display) -> Self {
        Error {
            code,
            message: Text::Owned(alloc::format!("{message}")),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.message {
            Text::Static(s) => f.write_str(s),
            #[cfg(feature = "alloc")]
            Text::Owned(s) => f.write_str(s),
        }
    }
}

impl Failure for Error {
    fn code(&self) -> i32 {
        self.code
    }
}

impl Failure for &str {}

impl Failure for core::convert::Infallible {}

#[cfg(feature = "alloc")]
impl Failure for alloc::string::String {}

/// The state of a [`crate::plugin!`] plugin: made at the first call, kept
/// across calls, in every execution mode.
#[doc(hidden)]
pub struct StateCell<T> {
    value: UnsafeCell<Option<T>>,
    busy: Cell<bool>,
}

// SAFETY: a plugin instance runs one call at a time on one thread (the
// host never calls an instance re-entrantly, and a host function may not
// call back into its guest); `busy` turns a re-entry that broke that into
// a panic rather than two `&mut` to the state.
unsafe impl<T> Sync for StateCell<T> {}

impl<T> StateCell<T> {
    /// An empty cell, for a `static`.
    pub const fn new() -> Self {
        StateCell {
            value: UnsafeCell::new(None),
            busy: Cell::new(false),
        }
    }

    /// Runs `f` with the state, made by `init` if this is the first call.
    pub fn with<R>(&self, init: impl FnOnce() -> T, f: impl FnOnce(&mut T) -> R) -> R {
        assert!(
            !self.busy.replace(true),
            "the plugin's state was entered again during a call"
        );
        struct Free<'a>(&'a Cell<bool>);
        impl Drop for Free<'_> {
            fn drop(&mut self) {
                self.0.set(false);
            }
        }
        let _free = Free(&self.busy);
        // SAFETY: `busy` was false, so no other reference to the value is
        // alive (see the `Sync` impl); this one ends before `_free` drops.
        let value = unsafe { &mut *self.value.get() };
        f(value.get_or_insert_with(init))
    }
}

impl<T> Default for StateCell<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> fmt::Debug for StateCell<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateCell").finish_non_exhaustive()
    }
}

/// Defines a plugin by the functions it exports, for calls by name in
/// every execution mode: each `fn name(input: I) -> Result<O, E>` where
/// `I` is an [`Input`] (`&[u8]`, `&str`, `Json<T>`, ...), `O` an
/// [`Output`] and `E` a [`Failure`].
///
/// ```no_run
/// use shmrt_guest::calls::Error;
///
/// fn count_vowels(text: &str) -> Result<u64, Error> {
///     Ok(text.chars().filter(|c| "aeiouAEIOU".contains(*c)).count() as u64)
/// }
/// fn reverse(bytes: &[u8]) -> Result<[u8; 4], &'static str> {
///     let arr: [u8; 4] = bytes.try_into().map_err(|_| "reverse takes 4 bytes")?;
///     Ok([arr[3], arr[2], arr[1], arr[0]])
/// }
/// shmrt_guest::exports!(count_vowels, reverse);
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! exports {
    ($($name:ident),+ $(,)?) => {
        fn __shmrt_route(
            call: $crate::calls::Call<'_>,
            outbox: &mut $crate::Outbox,
        ) -> ::core::result::Result<(), $crate::SendError> {
            match call.name() {
                $( ::core::stringify!($name) => call.run(outbox, $name), )+
                _ => call.no_such_export(outbox, &[$(::core::stringify!($name)),+]),
            }
        }

        $crate::__serve_calls!(__shmrt_route);
    };
}

/// Defines a plugin with state: a type whose methods, `fn name(&mut self,
/// input: I) -> Result<O, E>`, are the exports. The state is made at the
/// first call (`Default`, or the expression after `=`) and kept across
/// calls, in every execution mode.
///
/// ```no_run
/// use shmrt_guest::calls::Error;
///
/// #[derive(Default)]
/// struct Counter {
///     total: u64,
/// }
///
/// impl Counter {
///     fn add(&mut self, text: &str) -> Result<u64, Error> {
///         self.total += text.len() as u64;
///         Ok(self.total)
///     }
///     fn total(&mut self, _: ()) -> Result<u64, Error> {
///         Ok(self.total)
///     }
/// }
/// shmrt_guest::plugin!(Counter { add, total });
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! plugin {
    ($state:ty { $($name:ident),+ $(,)? }) => {
        $crate::plugin!($state = <$state as ::core::default::Default>::default() => { $($name),+ });
    };
    ($state:ty = $init:expr => { $($name:ident),+ $(,)? }) => {
        static __SHMRT_STATE: $crate::calls::StateCell<$state> = $crate::calls::StateCell::new();

        fn __shmrt_route(
            call: $crate::calls::Call<'_>,
            outbox: &mut $crate::Outbox,
        ) -> ::core::result::Result<(), $crate::SendError> {
            __SHMRT_STATE.with(
                || $init,
                |state: &mut $state| match call.name() {
                    $( ::core::stringify!($name) => call.run(outbox, |input| state.$name(input)), )+
                    _ => call.no_such_export(outbox, &[$(::core::stringify!($name)),+]),
                },
            )
        }

        $crate::__serve_calls!(__shmrt_route);
    };
}

/// The entry points of [`exports!`] and [`plugin!`]: every message goes
/// through [`dispatch`] to `$route`, in every execution mode.
#[doc(hidden)]
#[macro_export]
macro_rules! __serve_calls {
    ($route:ident) => {
        fn __shmrt_handle_call(
            msg: $crate::Message<'_>,
            outbox: &mut $crate::Outbox,
        ) -> ::core::result::Result<(), $crate::SendError> {
            $crate::calls::dispatch(msg, outbox, $route)
        }

        $crate::handler!(__shmrt_handle_call);
    };
}
