//! A sandbox that keeps one received message across calls from another
//! language ([`HeldSandbox`]): the Rust API lends a [`HostMessage`] for
//! the borrow of its receiver, which a C or Python caller can not express,
//! so the message is kept here, next to the sandbox it borrows, under a
//! generation number. Every access names the generation it was given;
//! after the release (or the next message, or the join) that generation is
//! gone and the access is an error, never a read of a freed or reused slot.

use std::ptr::NonNull;
use std::time::Duration;

use shmrt::{
    CallError, Execution, HostMessage, HostSender, ReadSend, RecvWait, ReservedSlot, Sandbox,
    SandboxError, SendReadError, SharedBytes, SharedBytesMut, StopHandle,
};

/// What went wrong, beside the runtime's own errors.
#[derive(Debug, thiserror::Error)]
pub enum HeldError {
    /// The runtime's error.
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    /// A call's error.
    #[error(transparent)]
    Call(#[from] CallError),
    /// The sandbox was joined: only freeing its handle is left.
    #[error("sandbox {sandbox}: already joined; nothing more can be done with it but free it")]
    Joined {
        /// The sandbox's name.
        sandbox: String,
    },
    /// A message is held and the operation needs the receiver.
    #[error(
        "sandbox {sandbox}: a received message is still held; release it before {what} \
         (its bytes are the receiver's until then)"
    )]
    Busy {
        /// The sandbox's name.
        sandbox: String,
        /// What waited for the release.
        what: &'static str,
    },
    /// The message was released (or replaced, or its sandbox joined).
    #[error(
        "sandbox {sandbox}: message {generation} was already released (or its sandbox moved on); \
         keep a copy of the bytes if you need them later"
    )]
    Released {
        /// The sandbox's name.
        sandbox: String,
        /// The message's generation.
        generation: u64,
    },
    /// A fill callback refused to commit its bytes (it kept a view).
    #[error("sandbox {sandbox}: nothing sent: {reason}")]
    NotSent {
        /// The sandbox's name.
        sandbox: String,
        /// Why.
        reason: String,
    },
}

/// The message held, and the sender borrowed with it.
struct Held {
    /// Borrows the receiver of the boxed sandbox (see [`HeldSandbox`]).
    msg: HostMessage<'static>,
    /// The sandbox's sender, borrowed together with the receiver
    /// ([`Sandbox::ends`]): used while `msg` lives instead of a new
    /// `&mut Sandbox`, which would overlap `msg`'s borrow.
    sender: NonNull<HostSender>,
    generation: u64,
}

/// A sandbox and at most one message received from it, kept across calls.
///
/// The sandbox is boxed and reached through a raw pointer so that the
/// held message's borrow of its receiver stays valid while this struct
/// moves. Invariant: while `held` is `Some`, no `&mut Sandbox` is made
/// (operations that need one return [`HeldError::Busy`], or use
/// `held.sender`); `held` is dropped before the box.
pub struct HeldSandbox {
    held: Option<Held>,
    /// `Box::into_raw` of the sandbox; `None` once joined.
    sandbox: Option<NonNull<Sandbox>>,
    name: String,
    execution: Execution,
    window: (usize, usize),
    stop: StopHandle,
    next_generation: u64,
}

// SAFETY: `Sandbox` is `Send`; the raw pointers point into the box this
// struct owns alone (the held message and the sender come from it), so
// moving the struct to another thread moves them all together.
unsafe impl Send for HeldSandbox {}

impl std::fmt::Debug for HeldSandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeldSandbox")
            .field("name", &self.name)
            .field("joined", &self.sandbox.is_none())
            .field("held", &self.held.as_ref().map(|h| h.generation))
            .finish()
    }
}

const _: () = {
    const fn is_send<T: Send>() {}
    is_send::<Sandbox>();
};

impl HeldSandbox {
    /// Keeps `sandbox`.
    pub fn new(sandbox: Sandbox) -> Self {
        let segment = sandbox.segment();
        let window = (segment.base() as usize, segment.len());
        HeldSandbox {
            held: None,
            name: sandbox.name().to_owned(),
            execution: sandbox.execution(),
            stop: sandbox.stop_handle(),
            window,
            sandbox: Some(NonNull::from(Box::leak(Box::new(sandbox)))),
            next_generation: 1,
        }
    }

    /// The sandbox's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where its guest runs.
    pub fn execution(&self) -> Execution {
        self.execution
    }

    /// The host address and length of the sandbox's segment window: every
    /// received message and every payload written in place lies inside.
    pub fn window(&self) -> (usize, usize) {
        self.window
    }

    /// Stops the sandbox from any thread.
    pub fn stop_handle(&self) -> &StopHandle {
        &self.stop
    }

    /// Whether it was joined.
    pub fn is_joined(&self) -> bool {
        self.sandbox.is_none()
    }

    /// The generation of the message held, if any.
    pub fn held_generation(&self) -> Option<u64> {
        self.held.as_ref().map(|h| h.generation)
    }

    fn joined(&self) -> HeldError {
        HeldError::Joined {
            sandbox: self.name.clone(),
        }
    }

    /// The whole sandbox, when no message borrows it.
    fn whole(&mut self, what: &'static str) -> Result<&mut Sandbox, HeldError> {
        let Some(mut ptr) = self.sandbox else {
            return Err(self.joined());
        };
        if self.held.is_some() {
            return Err(HeldError::Busy {
                sandbox: self.name.clone(),
                what,
            });
        }
        // SAFETY: the box is ours until `join`/drop; no message borrows
        // it (checked just above), and `&mut self` makes this the only
        // reference.
        Ok(unsafe { ptr.as_mut() })
    }

    /// The sender: through the held message's borrow when there is one.
    fn sender(&mut self) -> Result<&mut HostSender, HeldError> {
        if self.sandbox.is_none() {
            return Err(self.joined());
        }
        match &mut self.held {
            // SAFETY: made with the held message by `Sandbox::ends`, so
            // it does not overlap the message's borrow; the box lives
            // while `held` does, and `&mut self` makes this the only use.
            Some(held) => Ok(unsafe { held.sender.as_mut() }),
            None => Ok(self.whole("sending")?.sender()),
        }
    }

    /// Sends a copy of `payload`.
    pub fn send(&mut self, payload: &[u8]) -> Result<(), HeldError> {
        Ok(self.sender()?.send(payload)?)
    }

    /// Sends `payload` if there is room now.
    pub fn try_send(&mut self, payload: &[u8]) -> Result<bool, HeldError> {
        Ok(self.sender()?.try_send(payload)?)
    }

    /// Sends `len` bytes written in place by `fill`; `fill` may refuse
    /// (`Err(reason)`), and then nothing is sent.
    pub fn send_with(
        &mut self,
        len: usize,
        fill: impl FnOnce(SharedBytesMut<'_>) -> Result<(), String>,
    ) -> Result<(), HeldError> {
        if len == 0 {
            // `send_from_reader` sends nothing for nothing filled.
            return self.send(&[]);
        }
        let mut refused = None;
        let sent = self
            .sender()?
            .send_from_reader(len, |bytes| match fill(bytes) {
                Ok(()) => Ok(len),
                Err(reason) => {
                    refused = Some(reason);
                    Err(std::io::Error::other("refused"))
                }
            });
        match sent {
            Ok(ReadSend::Sent(_)) => Ok(()),
            Ok(ReadSend::Eof | ReadSend::GuestGone(_)) => Err(SandboxError::Closed {
                sandbox: self.name.clone(),
            }
            .into()),
            Err(SendReadError::Sandbox(e)) => Err(e.into()),
            Err(SendReadError::Read(_)) => Err(HeldError::NotSent {
                sandbox: self.name.clone(),
                reason: refused.unwrap_or_default(),
            }),
        }
    }

    /// Reserves a slot for `len` bytes, owned by the caller until
    /// [`Self::send_reserved`] or its drop (see
    /// [`HostSender::reserve_slot`]).
    pub fn reserve(
        &mut self,
        len: usize,
        timeout: Option<Duration>,
    ) -> Result<ReservedSlot, HeldError> {
        Ok(self.sender()?.reserve_slot(len, timeout)?)
    }

    /// Sends a slot [`Self::reserve`] gave (see
    /// [`HostSender::send_reserved`]); on an error it is given back.
    pub fn send_reserved(&mut self, slot: ReservedSlot) -> Result<(), HeldError> {
        Ok(self.sender()?.send_reserved(slot)?)
    }

    /// One poll of an async receive (see [`shmrt::HostReceiver::poll_recv`]):
    /// `Ready` with the generation of the message now held, `Pending` when
    /// `cx`'s waker will be woken. Errs with [`HeldError::Busy`] while
    /// another message is held.
    pub fn poll_recv(
        &mut self,
        wait: &mut RecvWait,
        cx: &mut std::task::Context<'_>,
    ) -> Result<std::task::Poll<u64>, HeldError> {
        let Some(mut ptr) = self.sandbox else {
            return Err(self.joined());
        };
        if self.held.is_some() {
            return Err(HeldError::Busy {
                sandbox: self.name.clone(),
                what: "receiving the next one",
            });
        }
        // SAFETY: as in `recv`.
        let sandbox: &'static mut Sandbox = unsafe { ptr.as_mut() };
        let (sender, receiver) = sandbox.ends();
        let msg = match receiver.poll_recv(wait, cx) {
            std::task::Poll::Pending => return Ok(std::task::Poll::Pending),
            std::task::Poll::Ready(msg) => msg?,
        };
        let generation = self.next_generation;
        self.next_generation += 1;
        self.held = Some(Held {
            msg,
            sender: NonNull::from(sender),
            generation,
        });
        Ok(std::task::Poll::Ready(generation))
    }

    /// A registration for [`Self::poll_recv`] (see
    /// [`shmrt::HostReceiver::recv_wait`]). Errs with [`HeldError::Busy`]
    /// while a message is held (it borrows the receiver).
    pub fn recv_wait(&mut self) -> Result<RecvWait, HeldError> {
        let Some(mut ptr) = self.sandbox else {
            return Err(self.joined());
        };
        if self.held.is_some() {
            return Err(HeldError::Busy {
                sandbox: self.name.clone(),
                what: "waiting for the next one",
            });
        }
        // SAFETY: the box is ours until `join`/drop, no message borrows
        // it (checked just above), and `&mut self` makes this the only
        // reference.
        let sandbox = unsafe { ptr.as_mut() };
        Ok(sandbox.ends().1.recv_wait())
    }

    /// Raises host goodbye.
    pub fn goodbye(&mut self) -> Result<(), HeldError> {
        self.sender()?.goodbye();
        Ok(())
    }

    /// Waits for a message (`timeout` `None`: as long as it takes; zero:
    /// only what is there) and holds it: `Ok(None)` when none came. Errs
    /// with [`HeldError::Busy`] while another is held.
    pub fn recv(&mut self, timeout: Option<Duration>) -> Result<Option<u64>, HeldError> {
        let Some(mut ptr) = self.sandbox else {
            return Err(self.joined());
        };
        if self.held.is_some() {
            return Err(HeldError::Busy {
                sandbox: self.name.clone(),
                what: "receiving the next one",
            });
        }
        // SAFETY: the box is ours until `join`/drop, and no message
        // borrows it (checked just above). The borrow is stretched to
        // 'static for the message kept in `held`: `held` is dropped
        // before the box (`release`, `join`, `close`, drop), and no
        // other `&mut Sandbox` is made while it lives (`whole`).
        let sandbox: &'static mut Sandbox = unsafe { ptr.as_mut() };
        let (sender, receiver) = sandbox.ends();
        let msg = match timeout {
            Some(Duration::ZERO) => receiver.try_recv()?,
            _ => receiver.recv_timeout(timeout)?,
        };
        let Some(msg) = msg else {
            return Ok(None);
        };
        let generation = self.next_generation;
        self.next_generation += 1;
        self.held = Some(Held {
            msg,
            sender: NonNull::from(sender),
            generation,
        });
        Ok(Some(generation))
    }

    fn held(&self, generation: u64) -> Result<&Held, HeldError> {
        match &self.held {
            Some(h) if h.generation == generation => Ok(h),
            _ => Err(HeldError::Released {
                sandbox: self.name.clone(),
                generation,
            }),
        }
    }

    /// The bytes of message `generation`, in place.
    pub fn bytes(&self, generation: u64) -> Result<SharedBytes<'_>, HeldError> {
        Ok(self.held(generation)?.msg.bytes())
    }

    /// Releases message `generation` (its slot or ring bytes go back).
    pub fn release(&mut self, generation: u64) -> Result<(), HeldError> {
        self.held(generation)?;
        self.held = None;
        Ok(())
    }

    /// Answers message `generation` in place (see
    /// [`HostMessage::reply_in_place`]); it is released.
    pub fn reply_in_place(
        &mut self,
        generation: u64,
        transform: impl FnOnce(SharedBytesMut<'_>) -> usize,
    ) -> Result<(), HeldError> {
        self.held(generation)?;
        let Some(mut held) = self.held.take() else {
            unreachable!("checked just above");
        };
        // SAFETY: as in `sender`: borrowed with the message from the box,
        // which outlives this call; nothing else uses it meanwhile.
        let sender = unsafe { held.sender.as_mut() };
        Ok(held.msg.reply_in_place(sender, transform)?)
    }

    /// Calls the plugin's function `function` with `input`.
    pub fn call(
        &mut self,
        function: &str,
        input: &[u8],
        timeout: Option<Duration>,
    ) -> Result<Vec<u8>, HeldError> {
        let sandbox = self.whole("a call (which reads its reply from the receiver)")?;
        Ok(match timeout {
            Some(t) => sandbox.call_timeout(function, input, t)?,
            None => sandbox.call(function, input)?,
        })
    }

    /// Drops a held message and joins the guest: its exit status, or how
    /// it failed. After this only [`Self::is_joined`] and the names work.
    pub fn join(&mut self) -> Result<i32, HeldError> {
        self.held = None;
        let Some(ptr) = self.sandbox.take() else {
            return Err(self.joined());
        };
        // SAFETY: made by `Box::leak` in `new`, taken once (`take`), and
        // the only borrow of it (the held message) was just dropped.
        let sandbox = unsafe { Box::from_raw(ptr.as_ptr()) };
        Ok(sandbox.join()?)
    }

    /// Says goodbye, drops what the guest still sends, and joins it,
    /// stopping it after `timeout`.
    pub fn close(&mut self, timeout: Duration) -> Result<i32, HeldError> {
        self.held = None;
        let Some(ptr) = self.sandbox.take() else {
            return Err(self.joined());
        };
        // SAFETY: as in `join`.
        let sandbox = unsafe { Box::from_raw(ptr.as_ptr()) };
        Ok(sandbox.close(timeout)?)
    }
}

impl Drop for HeldSandbox {
    fn drop(&mut self) {
        // The message first: it borrows the sandbox.
        self.held = None;
        if let Some(ptr) = self.sandbox.take() {
            // SAFETY: as in `join`.
            drop(unsafe { Box::from_raw(ptr.as_ptr()) });
        }
    }
}
