//! Calls by name, from the host: [`Sandbox::call`] sends a call of a
//! plugin's exported function and waits for its reply; a [`Caller`] lets
//! several threads (or one thread, several calls in flight) call the same
//! sandbox, each reply matched to its call by id.
//!
//! The call header (`shmrt_primitives::call_header`) rides in the
//! message payload, so the segment format does not change and a plugin
//! that answers plain messages keeps working beside this. What comes back
//! is guest-written: every header is copied out and checked before it is
//! believed.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use shmrt_primitives::call_header::{
    CALL_HEADER_SIZE, CallHeader, CallKind, FAILURE_CODE_SIZE, MAX_CALL_NAME, call_len,
    padded_name_len,
};
use shmrt_primitives::{SharedBytes, SharedBytesMut};

use super::receiver::{HostMessage, HostReceiver};
use super::sandbox::Sandbox;
use super::sender::{HostSender, SlotStall};
use crate::error::SandboxError;
use crate::exec::host_functions::in_host_function_of;
use crate::state::shared::SandboxShared;

/// Longest failure message kept from a plugin; the rest is cut.
pub const MAX_PLUGIN_MESSAGE: usize = 4096;

/// Why a call of a plugin's function gave no output.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// The function returned an error (its `Err`), or the plugin's SDK
    /// refused the call: a code below 0 is the SDK's
    /// ([`call_codes`]: no such export, input not decodable, ...).
    #[error("sandbox {sandbox}: `{function}` failed (code {code}): {message}")]
    Plugin {
        /// The sandbox's name.
        sandbox: String,
        /// The function called.
        function: String,
        /// The plugin's code (below 0: the SDK's, see `call_codes`).
        code: i32,
        /// What the plugin said.
        message: String,
    },
    /// No reply within the call's timeout. The call may still run; its
    /// late reply is dropped. (A guest that stops reading fills its
    /// ring: then the call may not even have been sent.)
    #[error("sandbox {sandbox}: no reply to `{function}` within {after:?}")]
    Timeout {
        /// The sandbox's name.
        sandbox: String,
        /// The function called.
        function: String,
        /// How long the call waited.
        after: Duration,
    },
    /// The name is empty or longer than 255 bytes.
    #[error("sandbox {sandbox}: `{function}` is not a function name (1 to 255 bytes)")]
    BadName {
        /// The sandbox's name.
        sandbox: String,
        /// The function called.
        function: String,
    },
    /// A host function of this sandbox called into its own guest (the
    /// guest is waiting for that host function: it would never answer).
    #[error(
        "sandbox {sandbox}: a host function called `{function}` in its own sandbox, whose guest \
         is waiting for that host function; call other sandboxes only"
    )]
    Reentrant {
        /// The sandbox's name.
        sandbox: String,
        /// The function called.
        function: String,
    },
    /// The reply is not a reply of this protocol (a plugin that lies).
    #[error("sandbox {sandbox}: the reply to `{function}` is malformed: {reason}")]
    BadReply {
        /// The sandbox's name.
        sandbox: String,
        /// The function called.
        function: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The sandbox failed or ended: a trap, its timeout, its fuel, its
    /// memory budget, a stop, or its end before the reply.
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
}

impl CallError {
    /// The plugin's error code, for [`CallError::Plugin`].
    pub fn plugin_code(&self) -> Option<i32> {
        match self {
            CallError::Plugin { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// The failure codes of the guest SDK (below 0; a plugin's own are 1 and
/// up).
pub mod call_codes {
    pub use shmrt_primitives::call_header::{
        CODE_BAD_INPUT as BAD_INPUT, CODE_BAD_OUTPUT as BAD_OUTPUT,
        CODE_MALFORMED_CALL as MALFORMED_CALL, CODE_NO_SUCH_EXPORT as NO_SUCH_EXPORT,
    };
}

fn identity(shared: &Arc<SandboxShared>) -> usize {
    Arc::as_ptr(shared) as usize
}

fn refuse_reentry(sandbox: usize, name: &str, function: &str) -> Result<(), CallError> {
    if in_host_function_of(sandbox) {
        return Err(CallError::Reentrant {
            sandbox: name.to_string(),
            function: function.to_string(),
        });
    }
    Ok(())
}

fn check_name(sandbox: &str, function: &str) -> Result<(), CallError> {
    if function.is_empty() || function.len() > MAX_CALL_NAME {
        return Err(CallError::BadName {
            sandbox: sandbox.to_string(),
            function: function.to_string(),
        });
    }
    Ok(())
}

/// Sends the call: header and name, then `input_len` bytes written in
/// place by `fill`; waits for room at most `timeout` (`WouldBlock`), the
/// slot wait timed by `stall`.
fn send_call(
    sender: &mut HostSender,
    (call_id, function): (u64, &str),
    input_len: usize,
    fill: impl FnOnce(SharedBytesMut<'_>),
    timeout: Option<Duration>,
    stall: &mut SlotStall,
) -> Result<(), SandboxError> {
    let name = function.as_bytes();
    let at = CALL_HEADER_SIZE + padded_name_len(name.len());
    let header = CallHeader {
        kind: CallKind::Call {
            name_len: u8::try_from(name.len()).expect("the name was checked"),
        },
        call_id,
    }
    .encode();
    let len = call_len(name.len(), input_len);
    sender.send_cut_timed(
        len,
        |mut out| {
            out.write_at(0, &header);
            out.write_at(CALL_HEADER_SIZE, name);
            out.write_at(
                CALL_HEADER_SIZE + name.len(),
                &[0; 7][..at - CALL_HEADER_SIZE - name.len()],
            );
            let input = out.get_mut(at..).expect("the payload holds the input");
            fill(input);
            len
        },
        timeout,
        stall,
    )
}

/// How long a [`Caller`]'s send waits for room before it reads replies
/// itself (when no other thread does): a guest whose replies fill its
/// ring stops taking calls until someone reads them.
const SEND_TURN: Duration = Duration::from_millis(2);

/// A reply read from the guest: whose it is and what it says.
enum Reply<'m> {
    Output(u64, SharedBytes<'m>),
    Failure(u64, i32, String),
    /// Not a reply (a plain message, a call from the guest): dropped.
    Other(&'static str),
    Malformed(String),
}

fn read_reply<'m>(msg: &'m HostMessage<'_>) -> Reply<'m> {
    let bytes = msg.bytes();
    // The header is copied out once: the guest may rewrite it meanwhile.
    let mut head = [0u8; CALL_HEADER_SIZE];
    let n = bytes.len().min(CALL_HEADER_SIZE);
    bytes
        .get(..n)
        .expect("within the payload")
        .copy_to(&mut head[..n]);
    let header = match CallHeader::decode(&head[..n]) {
        None => return Reply::Other("a message without a call header"),
        Some(Err(e)) => return Reply::Malformed(e.to_string()),
        Some(Ok(h)) => h,
    };
    let body = bytes.get(CALL_HEADER_SIZE..).expect("the header was read");
    match header.kind {
        CallKind::Reply => Reply::Output(header.call_id, body),
        CallKind::Call { .. } => Reply::Other("a call from the guest"),
        CallKind::Failure => {
            let Some(code) = body.array::<FAILURE_CODE_SIZE>(0) else {
                return Reply::Malformed(format!(
                    "a failure of {} bytes, without its code",
                    bytes.len()
                ));
            };
            let text = body.get(FAILURE_CODE_SIZE..).expect("the code was read");
            let mut copy = vec![0u8; text.len().min(MAX_PLUGIN_MESSAGE)];
            text.get(..copy.len()).expect("cut").copy_to(&mut copy);
            let message = crate::state::escape::escape_line(&String::from_utf8_lossy(&copy));
            Reply::Failure(header.call_id, i32::from_le_bytes(code), message)
        }
    }
}

/// What a call's wait ends with.
type Outcome<R> = Result<R, CallError>;

fn outcome_of<R>(
    reply: Reply<'_>,
    sandbox: &str,
    function: &str,
    read: impl FnOnce(SharedBytes<'_>) -> R,
) -> Outcome<R> {
    match reply {
        Reply::Output(_, bytes) => Ok(read(bytes)),
        Reply::Failure(_, code, message) => Err(CallError::Plugin {
            sandbox: sandbox.to_string(),
            function: function.to_string(),
            code,
            message,
        }),
        Reply::Malformed(reason) => Err(CallError::BadReply {
            sandbox: sandbox.to_string(),
            function: function.to_string(),
            reason,
        }),
        Reply::Other(_) => unreachable!("only replies reach here"),
    }
}

fn reply_id(reply: &Reply<'_>) -> Option<u64> {
    match reply {
        Reply::Output(id, _) | Reply::Failure(id, _, _) => Some(*id),
        Reply::Other(_) | Reply::Malformed(_) => None,
    }
}

/// Waits on `receiver` for the reply to `call_id`, dropping other
/// messages (late replies of calls that timed out, plain messages), each
/// logged.
fn wait_reply<R>(
    receiver: &mut HostReceiver,
    sandbox: &str,
    call_id: u64,
    function: &str,
    (timeout, until): (Option<Duration>, Option<Instant>),
    read: impl FnOnce(SharedBytes<'_>) -> R,
) -> Outcome<R> {
    loop {
        let left = until.map(|u| u.saturating_duration_since(Instant::now()));
        let Some(msg) = receiver.recv_timeout(left)? else {
            return Err(CallError::Timeout {
                sandbox: sandbox.to_string(),
                function: function.to_string(),
                after: timeout.unwrap_or_default(),
            });
        };
        let reply = read_reply(&msg);
        match reply_id(&reply) {
            Some(id) if id == call_id => return outcome_of(reply, sandbox, function, read),
            None if matches!(reply, Reply::Malformed(_)) => {
                return outcome_of(reply, sandbox, function, read);
            }
            Some(id) => tracing::debug!(sandbox, "dropped the late reply to call {id}"),
            None => tracing::warn!(
                sandbox,
                "dropped {} bytes while waiting for the reply to `{function}`: {}",
                msg.len(),
                match reply {
                    Reply::Other(what) => what,
                    _ => "not a reply",
                }
            ),
        }
        // A guest that never stops sending keeps the ring from emptying:
        // the timeout is checked between messages too.
        if until.is_some_and(|u| Instant::now() >= u) {
            return Err(CallError::Timeout {
                sandbox: sandbox.to_string(),
                function: function.to_string(),
                after: timeout.unwrap_or_default(),
            });
        }
    }
}

impl Sandbox {
    /// Calls the plugin's exported function `function` with `input` and
    /// waits for its output (as long as it takes: the sandbox's own
    /// timeout, if any, bounds it). See [`Self::call_timeout`].
    pub fn call(&mut self, function: &str, input: &[u8]) -> Result<Vec<u8>, CallError> {
        self.call_with(
            function,
            input.len(),
            |mut b| b.copy_from(input),
            None,
            |out| out.to_vec(),
        )
    }

    /// [`Self::call`], giving up after `timeout` ([`CallError::Timeout`]),
    /// the wait for room to send the call included.
    pub fn call_timeout(
        &mut self,
        function: &str,
        input: &[u8],
        timeout: Duration,
    ) -> Result<Vec<u8>, CallError> {
        self.call_with(
            function,
            input.len(),
            |mut b| b.copy_from(input),
            Some(timeout),
            |out| out.to_vec(),
        )
    }

    /// A call without copies: `fill` writes the `input_len` bytes of input
    /// in place in the segment, and `read` reads the output in place (a
    /// view the guest could still write: copy what must not change) before
    /// its slot is given back.
    pub fn call_with<R>(
        &mut self,
        function: &str,
        input_len: usize,
        fill: impl FnOnce(SharedBytesMut<'_>),
        timeout: Option<Duration>,
        read: impl FnOnce(SharedBytes<'_>) -> R,
    ) -> Result<R, CallError> {
        let Sandbox {
            sender,
            receiver,
            handle,
            next_call_id,
        } = self;
        let sandbox = handle.shared.name();
        check_name(sandbox, function)?;
        refuse_reentry(identity(&handle.shared), sandbox, function)?;
        let call_id = *next_call_id;
        *next_call_id = call_id.wrapping_add(1);
        // The timeout bounds the whole call: a guest that stops reading
        // its inbox fills its ring, and the send waits no longer.
        let until = timeout.and_then(|t| Instant::now().checked_add(t));
        let sent = send_call(
            sender,
            (call_id, function),
            input_len,
            fill,
            timeout,
            &mut SlotStall::default(),
        );
        match sent {
            Ok(()) => {}
            Err(SandboxError::WouldBlock { .. }) => {
                return Err(CallError::Timeout {
                    sandbox: sandbox.to_string(),
                    function: function.to_string(),
                    after: timeout.unwrap_or_default(),
                });
            }
            Err(e) => return Err(e.into()),
        }
        wait_reply(receiver, sandbox, call_id, function, (timeout, until), read)
    }

    /// Says goodbye, reads and drops what the guest still sends, and joins
    /// it: the exit status, or why it failed. A guest still running after
    /// `timeout` is stopped ([`SandboxError::Stopped`]).
    pub fn close(mut self, timeout: Duration) -> Result<i32, SandboxError> {
        self.sender.goodbye();
        let until = Instant::now().checked_add(timeout);
        loop {
            let left = until.map(|u| u.saturating_duration_since(Instant::now()));
            if left == Some(Duration::ZERO) {
                self.handle.stop();
                break;
            }
            match self.receiver.recv_timeout(left) {
                Ok(Some(msg)) => drop(msg),
                Ok(None) => {
                    self.handle.stop();
                    break;
                }
                // Closed: all read; another error is the join's to say.
                Err(_) => break,
            }
        }
        self.handle.join()
    }

    /// Turns this sandbox into a [`Caller`] that threads share, and the
    /// handle that stops and joins it.
    pub fn into_caller(self) -> (Caller, crate::exec::handle::SandboxHandle) {
        let sandbox = self.handle.shared.name().to_owned();
        self.handle.shared.set_ends_apart();
        let caller = Caller(Arc::new(CallerShared {
            identity: identity(&self.handle.shared),
            sandbox,
            sender: Mutex::new(*self.sender),
            receiver: Mutex::new(*self.receiver),
            next_id: AtomicU64::new(self.next_call_id),
            book: Mutex::new(Book::default()),
            changed: Condvar::new(),
        }));
        (caller, self.handle)
    }
}

/// Calls of one sandbox's functions from any number of threads, several in
/// flight at once, each reply matched to its call. Cheap to clone.
///
/// One waiting thread at a time reads the guest's replies and hands each
/// to its caller; the others sleep until theirs comes. Outputs are copied
/// out of the segment (use [`Sandbox::call_with`] to read in place).
#[derive(Clone, Debug)]
pub struct Caller(Arc<CallerShared>);

#[derive(Debug)]
struct CallerShared {
    identity: usize,
    sandbox: String,
    sender: Mutex<HostSender>,
    receiver: Mutex<HostReceiver>,
    next_id: AtomicU64,
    book: Mutex<Book>,
    changed: Condvar,
}

/// Replies read for other callers, and whether someone is reading.
#[derive(Debug, Default)]
struct Book {
    done: HashMap<u64, Outcome<Vec<u8>>>,
    /// Calls sent whose [`PendingCall`] still waits for a reply: a reply
    /// to any other id (a call that timed out or was dropped, or one
    /// never made) is dropped, so `done` holds no more than the calls in
    /// flight whatever the guest sends.
    outstanding: HashSet<u64>,
    reading: bool,
    /// Why the sandbox can give no more replies, once it can not.
    ended: Option<String>,
}

/// A call sent and not yet answered ([`Caller::start`]).
#[derive(Debug)]
pub struct PendingCall {
    caller: Caller,
    call_id: u64,
    function: String,
    waited: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Caller {
    /// The sandbox's name.
    pub fn sandbox(&self) -> &str {
        &self.0.sandbox
    }

    /// Calls `function` with `input` and waits for its output.
    pub fn call(&self, function: &str, input: &[u8]) -> Result<Vec<u8>, CallError> {
        self.start(function, input)?.wait(None)
    }

    /// Sends a call of `function` and returns at once; [`PendingCall::wait`]
    /// gives its output. Several calls may be in flight.
    pub fn start(&self, function: &str, input: &[u8]) -> Result<PendingCall, CallError> {
        let shared = &self.0;
        check_name(&shared.sandbox, function)?;
        refuse_reentry(shared.identity, &shared.sandbox, function)?;
        if let Some(why) = &lock(&shared.book).ended {
            return Err(ended(&shared.sandbox, function, why));
        }
        let call_id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        // Known before it is sent: its reply may be read at once.
        lock(&shared.book).outstanding.insert(call_id);
        if let Err(e) = self.send(call_id, function, input) {
            lock(&shared.book).outstanding.remove(&call_id);
            return Err(e.into());
        }
        Ok(PendingCall {
            caller: self.clone(),
            call_id,
            function: function.to_string(),
            waited: false,
        })
    }

    /// Says goodbye: the guest ends once it has answered what was sent.
    pub fn goodbye(&self) {
        lock(&self.0.sender).goodbye();
    }

    /// Sends a call. While the ring is full and no other thread reads
    /// replies, reads them itself: calls started from one thread before
    /// it waits for any would otherwise fill both rings (the guest waits
    /// for room for its replies, the host for room for its calls).
    fn send(&self, call_id: u64, function: &str, input: &[u8]) -> Result<(), SandboxError> {
        let shared = &self.0;
        let mut stall = SlotStall::default();
        loop {
            let sent = send_call(
                &mut lock(&shared.sender),
                (call_id, function),
                input.len(),
                |mut b| b.copy_from(input),
                Some(SEND_TURN),
                &mut stall,
            );
            match sent {
                Err(SandboxError::WouldBlock { .. }) => {}
                other => return other,
            }
            {
                let mut book = lock(&shared.book);
                if book.reading {
                    // The reader frees the room.
                    continue;
                }
                book.reading = true;
            }
            let read = Instant::now().checked_add(SEND_TURN);
            let outcome = self.read_until(None, function, read);
            let mut book = lock(&shared.book);
            book.reading = false;
            shared.changed.notify_all();
            if let Err(CallError::Sandbox(e)) = outcome {
                return Err(e);
            }
        }
    }

    /// Reads replies until `call_id`'s (or, for `None`, until `until`),
    /// handing the others to their callers. Only one thread reads at a
    /// time (`Book::reading`).
    fn read_until(
        &self,
        call_id: Option<u64>,
        function: &str,
        until: Option<Instant>,
    ) -> Outcome<Vec<u8>> {
        let shared = &self.0;
        let mut receiver = lock(&shared.receiver);
        let past = || until.is_some_and(|u| Instant::now() >= u);
        loop {
            let left = until.map(|u| u.saturating_duration_since(Instant::now()));
            let msg = match receiver.recv_timeout(left) {
                Ok(Some(msg)) => msg,
                Ok(None) => return Err(timeout(&shared.sandbox, function, Duration::ZERO)),
                Err(e) => {
                    let mut book = lock(&shared.book);
                    book.ended = Some(e.to_string());
                    shared.changed.notify_all();
                    return Err(e.into());
                }
            };
            let reply = read_reply(&msg);
            match reply_id(&reply) {
                None => tracing::warn!(
                    sandbox = shared.sandbox,
                    "dropped {} bytes that are not a reply to a call",
                    msg.len()
                ),
                Some(id) => {
                    let mut book = lock(&shared.book);
                    if !book.outstanding.remove(&id) {
                        // Read before the copy: a guest's flood of replies
                        // to calls never made costs no allocation.
                        tracing::debug!(
                            sandbox = shared.sandbox,
                            "dropped a reply to call {id}, which nobody waits for"
                        );
                    } else {
                        let outcome = outcome_of(reply, &shared.sandbox, function, |b| b.to_vec());
                        if Some(id) == call_id {
                            return outcome;
                        }
                        // The function's name in an error is the reader's;
                        // put back the caller's when it takes it (see
                        // `PendingCall::wait`).
                        book.done.insert(id, outcome);
                        shared.changed.notify_all();
                    }
                }
            }
            drop(msg);
            // A guest that never stops sending keeps the ring from
            // emptying: the timeout is checked between messages too.
            if past() {
                return Err(timeout(&shared.sandbox, function, Duration::ZERO));
            }
        }
    }
}

fn timeout(sandbox: &str, function: &str, after: Duration) -> CallError {
    CallError::Timeout {
        sandbox: sandbox.to_string(),
        function: function.to_string(),
        after,
    }
}

fn ended(sandbox: &str, function: &str, why: &str) -> CallError {
    CallError::Sandbox(SandboxError::Closed {
        sandbox: format!("{sandbox} (calling `{function}`: {why})"),
    })
}

/// An error read by another thread names that thread's function: name
/// this call's instead.
fn renamed(outcome: Outcome<Vec<u8>>, function: &str) -> Outcome<Vec<u8>> {
    outcome.map_err(|e| match e {
        CallError::Plugin {
            sandbox,
            code,
            message,
            ..
        } => CallError::Plugin {
            sandbox,
            function: function.to_string(),
            code,
            message,
        },
        CallError::BadReply {
            sandbox, reason, ..
        } => CallError::BadReply {
            sandbox,
            function: function.to_string(),
            reason,
        },
        other => other,
    })
}

impl PendingCall {
    /// The call's correlation id.
    pub fn id(&self) -> u64 {
        self.call_id
    }

    /// Waits for the output, at most `timeout` (`None`: as long as it
    /// takes).
    pub fn wait(mut self, timeout: Option<Duration>) -> Result<Vec<u8>, CallError> {
        self.waited = true;
        let shared = &self.caller.0;
        let until = timeout.and_then(|t| Instant::now().checked_add(t));
        let mut book = lock(&shared.book);
        loop {
            if let Some(outcome) = book.done.remove(&self.call_id) {
                return renamed(outcome, &self.function);
            }
            if let Some(why) = &book.ended {
                return Err(ended(&shared.sandbox, &self.function, why));
            }
            if !book.reading {
                book.reading = true;
                drop(book);
                let outcome = self
                    .caller
                    .read_until(Some(self.call_id), &self.function, until);
                let mut book = lock(&shared.book);
                book.reading = false;
                shared.changed.notify_all();
                if matches!(outcome, Err(CallError::Timeout { .. })) {
                    book.outstanding.remove(&self.call_id);
                    return Err(timeout_err(&shared.sandbox, &self.function, timeout));
                }
                return outcome;
            }
            book = match until {
                None => shared.changed.wait(book).unwrap_or_else(|e| e.into_inner()),
                Some(u) => {
                    let left = u.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        book.outstanding.remove(&self.call_id);
                        return Err(timeout_err(&shared.sandbox, &self.function, timeout));
                    }
                    shared
                        .changed
                        .wait_timeout(book, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
        }
    }
}

fn timeout_err(sandbox: &str, function: &str, after: Option<Duration>) -> CallError {
    timeout(sandbox, function, after.unwrap_or_default())
}

impl Drop for PendingCall {
    fn drop(&mut self) {
        if !self.waited {
            let mut book = lock(&self.caller.0.book);
            book.done.remove(&self.call_id);
            book.outstanding.remove(&self.call_id);
        }
    }
}
