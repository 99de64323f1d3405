//! A running sandbox ([`Sandbox`]): the host's ends of its channel and
//! the handle that joins its guest, together.

use shmrt_primitives::Segment;

use super::receiver::HostReceiver;
use super::sender::HostSender;
use super::wait::Home;
use crate::error::SandboxError;
use crate::exec::handle::SandboxHandle;
use crate::state::options::Execution;

/// A running sandbox: the host's ends of its channel and its thread.
#[derive(Debug)]
pub struct Sandbox {
    /// Boxed, so that an end knows when it is used away from here (see
    /// `HostSender::check_home`).
    pub(crate) sender: Box<HostSender>,
    pub(crate) receiver: Box<HostReceiver>,
    pub(crate) handle: SandboxHandle,
    /// The correlation id of this sandbox's next call ([`Self::call`]).
    pub(crate) next_call_id: u64,
}

impl Sandbox {
    /// A sandbox of `sender`, `receiver` and `handle`, its ends boxed and
    /// told where they live.
    pub(crate) fn new(sender: HostSender, receiver: HostReceiver, handle: SandboxHandle) -> Self {
        let mut sender = Box::new(sender);
        let mut receiver = Box::new(receiver);
        sender.home = Home::of(&*sender);
        receiver.home = Home::of(&*receiver);
        Sandbox {
            sender,
            receiver,
            handle,
            next_call_id: 1,
        }
    }

    /// Where the guest runs ([`Execution::Auto`] resolved).
    pub fn execution(&self) -> Execution {
        self.handle.execution()
    }

    /// The sandbox's name.
    pub fn name(&self) -> &str {
        self.handle.shared.name()
    }

    /// The segment through the host's own mapping (for inspection; the
    /// guest may write any of it at any time).
    pub fn segment(&self) -> &Segment {
        self.handle.shared.segment_file().segment()
    }

    /// Where the segment window starts in the guest's linear memory.
    pub fn window_base(&self) -> usize {
        self.handle.shared.window_base()
    }

    /// A handle that stops this sandbox from any thread (as
    /// [`SandboxHandle::stop_handle`]), while another uses its ends.
    pub fn stop_handle(&self) -> crate::exec::handle::StopHandle {
        self.handle.stop_handle()
    }

    /// The sending end (host to guest).
    pub fn sender(&mut self) -> &mut HostSender {
        &mut self.sender
    }

    /// The receiving end (guest to host).
    pub fn receiver(&mut self) -> &mut HostReceiver {
        &mut self.receiver
    }

    /// Both ends at once, borrowed together: to answer a message taken
    /// from the receiver with the sender
    /// ([`HostMessage::reply_in_place`](crate::HostMessage::reply_in_place))
    /// while keeping the sandbox whole (for [`Self::call`]).
    ///
    /// Two ends borrowed at once can be used on two threads at once (a
    /// scoped thread each), so from the first call on, the host's wakes
    /// of a guest on its thread fence as a split sandbox's do (about 30 ns
    /// of a callback round trip); [`Self::sender`] and [`Self::receiver`]
    /// keep the path without fences.
    pub fn ends(&mut self) -> (&mut HostSender, &mut HostReceiver) {
        self.handle.shared.set_ends_apart();
        (&mut self.sender, &mut self.receiver)
    }

    /// Splits into ends that can move to other threads, and the handle
    /// that joins the guest.
    pub fn split(self) -> (HostSender, HostReceiver, SandboxHandle) {
        self.handle.shared.set_ends_apart();
        (*self.sender, *self.receiver, self.handle)
    }

    /// Waits for the guest to return, as [`SandboxHandle::join`]. It says
    /// no goodbye and stops nothing: a guest still waiting for messages
    /// keeps waiting (up to its deadline, if it has one), so call
    /// [`HostSender::goodbye`] first (or stop it through the
    /// [`SandboxHandle`] of [`Self::split`]).
    pub fn join(self) -> Result<i32, SandboxError> {
        self.handle.join()
    }
}
