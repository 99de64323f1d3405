//! A WASI (std) guest: echoes every message with a prefix that uses the
//! heap, prints to stdout (which shmrt sends to stderr), and exits with
//! the number of messages it saw through `std::process::exit`. `sleep MS`
//! sleeps (a blocking WASI call) before it answers.

fn main() {
    let mut channel = shmrt_guest::Channel::open().expect("open the channel");
    let (inbox, outbox) = channel.split();
    let mut seen = 0;
    while let Some(msg) = inbox.recv() {
        if let Some(ms) = msg.as_bytes().strip_prefix(b"sleep ") {
            // A blocking WASI call (poll_oneoff on a clock) the host's
            // deadline and stop must still end.
            let ms: u64 = String::from_utf8_lossy(ms).trim().parse().unwrap_or(0);
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
        let reply = format!("std:{}", String::from_utf8_lossy(msg.as_bytes()));
        outbox.send(reply.as_bytes()).expect("send");
        seen += 1;
    }
    println!("std-echo saw {seen} messages");
    std::process::exit(seen);
}
