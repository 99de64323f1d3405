//! One sandbox's state and limits, above the segment and below the code
//! that runs guests: its options (`options.rs`), what its guest, host ends
//! and imports share (`shared.rs`, with `wake_slot.rs`), its store's data
//! and WASI context (`store.rs`), what interrupts its guest
//! (`interrupts.rs`), its memory budget (`memory_limit.rs`), the stack its
//! code runs on (`guest_stack.rs`), what it writes for people to read
//! (`guest_output.rs`), and the runtime-wide clocks its waits use: the
//! epoch ticker (`epoch_ticker.rs`) and the wake timer of async hosts
//! (`wake_timer.rs`), and the process's asymmetric fence
//! (`asymmetric_fence.rs`).

pub(crate) mod asymmetric_fence;
pub(crate) mod contract;
pub(crate) mod epoch_ticker;
pub(crate) mod escape;
pub(crate) mod guest_output;
pub(crate) mod guest_stack;
pub(crate) mod interrupts;
pub(crate) mod memory_limit;
pub(crate) mod options;
pub(crate) mod shared;
pub(crate) mod store;
pub(crate) mod wake_slot;
pub(crate) mod wake_timer;
