//! `containerd-shim-shmrt-v1`: containerd's runtime `io.containerd.shmrt.v1`.
//! It runs the wasm module of an OCI image as a shmrt plugin, exactly as
//! `shmrt run` runs it (docs/run-on-kubernetes.md).
//!
//! runwasi's `containerd-shim-wasm` does the containerd side: the shim v2
//! protocol, the container (namespaces, cgroup, mounts, the stdio fifos,
//! through youki's libcontainer) and the image's wasm layers. In the
//! container's process, [`PluginSandbox::run_wasi`] turns the container's
//! spec into a `shmrt run` command line ([`plan`]) and runs it there with
//! the `shmrt` command's own code (`shmrt_cli::main`): its framing,
//! execution modes, restarts, signal handling and exit statuses. (The
//! container's root filesystem is the image's, with no dynamic loader, so
//! `shmrt` cannot be executed there as a program.)
//! A container without wasm (an ELF entry point) runs as an ordinary Linux
//! container, so that a pod of this runtime class can hold native
//! containers too.

mod plan;
mod precompile;

use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};

use anyhow::Context;
use containerd_shim_wasm::sandbox::Sandbox;
use containerd_shim_wasm::sandbox::context::{RuntimeContext, Source};
use containerd_shim_wasm::shim::{Cli, Compiler, Config, Shim, Version, version};

use plan::Plan;

fn main() {
    ShmrtShim::run(Config::default());
}

/// The shim: its name makes the runtime `io.containerd.shmrt.v1`.
struct ShmrtShim;

impl Shim for ShmrtShim {
    type Sandbox = PluginSandbox;

    fn name() -> &'static str {
        "shmrt"
    }

    fn version() -> Version {
        version!()
    }

    async fn compiler() -> Option<impl Compiler> {
        Some(precompile::Precompiler)
    }
}

/// A container's plugin.
#[derive(Default)]
struct PluginSandbox;

impl Sandbox for PluginSandbox {
    async fn run_wasi(&self, ctx: &impl RuntimeContext) -> anyhow::Result<i32> {
        run(ctx).inspect_err(|e| {
            // The container's stderr is the task's log.
            eprintln!("containerd-shim-shmrt-v1: {e:#}");
        })
    }

    async fn can_handle(&self, ctx: &impl RuntimeContext) -> anyhow::Result<()> {
        let entrypoint = ctx.entrypoint();
        let path = match entrypoint.source {
            Source::Oci(_) => return Ok(()),
            Source::File(path) => path,
        };
        // No wasm layer: a module in the root filesystem will do.
        let mut magic = [0u8; 4];
        let is_module = std::fs::File::open(&path)
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
            .is_ok()
            && &magic == b"\0asm";
        if is_module {
            return Ok(());
        }
        let e = anyhow::anyhow!(
            "the image has no wasm layer (media type {}) and its entry point `{}` is not a \
             wasm module in the container's root filesystem: build the image with the module \
             as a wasm layer and `wasm` as its architecture (docs/run-on-kubernetes.md)",
            ShmrtShim::supported_layers_types().join(" or "),
            path.display()
        );
        eprintln!("containerd-shim-shmrt-v1: {e:#}");
        Err(e)
    }
}

/// Runs `shmrt run` on the container's module in this process; its exit
/// status.
fn run(ctx: &impl RuntimeContext) -> anyhow::Result<i32> {
    let entrypoint = ctx.entrypoint();
    let source = &entrypoint.source;
    let bytes = source
        .as_bytes()
        .context("reading the container's module")?;
    let mut cache_dir = None;
    let wasm: &[u8] = if source.is_precompiled()? {
        let parts = precompile::unbundle(&bytes)?;
        // A root filesystem that cannot take the entry: compiled afresh.
        match write_cache_entry(parts.entry_name, parts.entry) {
            Ok(dir) => cache_dir = Some(dir),
            Err(e) => log::warn!("{e:#}; compiling the module afresh"),
        }
        parts.wasm
    } else {
        &bytes
    };
    let module = module_fd(entrypoint.name.as_deref().unwrap_or("plugin"), wasm)?;
    let plugin = format!("/proc/self/fd/{}", module.as_raw_fd());
    let mut plan = Plan::new(&plugin, ctx.args(), ctx.envs(), plan::cgroup_memory_limit())?;
    if let Some(dir) = cache_dir {
        plan.args.insert(1, "--cache-dir".into());
        plan.args.insert(2, dir.into());
    }
    stdin_read_only();
    log::info!("running shmrt {:?}", plan.args);
    let code = shmrt_cli::main(std::iter::once("shmrt".into()).chain(plan.args));
    drop(module);
    Ok(i32::from(shmrt_cli::exit_status(code)))
}

/// Makes standard input read-only, so that the plugin sees the end of its
/// input. runwasi opens the container's stdin fifo for reading and
/// writing (an open that never blocks), so the container would hold a
/// writer of its own input and never read to its end; reopened for
/// reading through /proc, the fifo ends when its writer (ctr, the kubelet)
/// closes it.
fn stdin_read_only() {
    use std::os::unix::fs::FileTypeExt;
    let is_fifo = std::fs::metadata("/proc/self/fd/0").is_ok_and(|m| m.file_type().is_fifo());
    if !is_fifo {
        return;
    }
    match std::fs::File::open("/proc/self/fd/0") {
        Ok(reader) => {
            // SAFETY: dup2 onto fd 0, which nothing in this process holds
            // as an owned handle (std's stdin reads fd 0 by number).
            if unsafe { libc::dup2(reader.as_raw_fd(), 0) } < 0 {
                log::warn!(
                    "could not make stdin read-only: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
        Err(e) => log::warn!("could not reopen stdin read-only through /proc: {e}"),
    }
}

/// The module as a memory file that `shmrt run` reads by its
/// `/proc/self/fd` path: the container's root filesystem may be read-only.
fn module_fd(name: &str, wasm: &[u8]) -> anyhow::Result<OwnedFd> {
    let fd = rustix::fs::memfd_create(name, rustix::fs::MemfdFlags::CLOEXEC)
        .context("creating a memory file for the module")?;
    let mut file = std::fs::File::from(fd);
    file.write_all(wasm)
        .context("writing the module to a memory file")?;
    Ok(file.into())
}

/// Writes a precompiled cache entry where `shmrt run` looks for it, in a
/// fresh directory of the container's /tmp; returns the cache directory
/// to give as `--cache-dir`.
fn write_cache_entry(name: &str, entry: &[u8]) -> anyhow::Result<std::path::PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let base = std::path::Path::new("/tmp").join(format!("shmrt-cache-{}", std::process::id()));
    let modules = base.join("shmrt").join("modules");
    std::fs::DirBuilder::new()
        .mode(0o700)
        .recursive(true)
        .create(&modules)
        .with_context(|| format!("creating {} for the precompiled module", modules.display()))?;
    std::fs::write(modules.join(name), entry)
        .with_context(|| format!("writing the precompiled module into {}", modules.display()))?;
    Ok(base.join("shmrt"))
}
