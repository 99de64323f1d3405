//! Spawn options: the sandbox's name, execution mode, limits, segment
//! sizes, configuration, and host functions as C function pointers.

use super::*;

/// Makes spawn options with the defaults (see `SandboxOptions`).
///
/// # Safety
///
/// `out` is null or valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmrt_options_new(out: *mut ShmrtOptions) -> i32 {
    guard(|| {
        // SAFETY: the caller's promise.
        let out = unsafe { out_ref(out, "out") }?;
        out.id = handles::insert(Object::Options(Arc::new(Mutex::new(
            SandboxOptions::default(),
        ))));
        Ok(SHMRT_OK)
    })
}

/// Releases options (sandboxes spawned with them keep a copy).
#[unsafe(no_mangle)]
pub extern "C" fn shmrt_options_free(options: ShmrtOptions) -> i32 {
    guard(|| {
        drop(handles::remove(options.id, "options", |o| {
            matches!(o, Object::Options(_))
        })?);
        Ok(SHMRT_OK)
    })
}

/// The sandbox's name, for messages and logs.
///
/// # Safety
///
/// `name` is a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmrt_options_set_name(options: ShmrtOptions, name: *const c_char) -> i32 {
    // SAFETY: the caller's promise.
    let name = unsafe { in_str(name, "name") }.map(str::to_owned);
    with_options(options, |o| {
        o.name = name?;
        Ok(())
    })
}

/// Where the guest runs: `SHMRT_EXEC_AUTO`, `_THREAD`, `_FIBER` or
/// `_CALLBACK`.
#[unsafe(no_mangle)]
pub extern "C" fn shmrt_options_set_execution(options: ShmrtOptions, execution: i32) -> i32 {
    with_options(options, |o| {
        o.execution = match execution {
            SHMRT_EXEC_AUTO => Execution::Auto,
            SHMRT_EXEC_THREAD => Execution::Thread,
            SHMRT_EXEC_FIBER => Execution::Fiber,
            SHMRT_EXEC_CALLBACK => Execution::Callback,
            other => {
                return Err(Fail::new(
                    SHMRT_ERR_INVALID,
                    format!(
                        "execution mode {other} is none of SHMRT_EXEC_AUTO, _THREAD, _FIBER, _CALLBACK"
                    ),
                ));
            }
        };
        Ok(())
    })
}

/// The guest's wall-clock limit in milliseconds (negative: none).
#[unsafe(no_mangle)]
pub extern "C" fn shmrt_options_set_timeout_ms(options: ShmrtOptions, ms: i64) -> i32 {
    with_options(options, |o| {
        o.timeout = timeout_of(ms);
        Ok(())
    })
}

/// Fuel the guest may burn (0: unmetered); needs a runtime made with
/// `SHMRT_RUNTIME_FUEL`.
#[unsafe(no_mangle)]
pub extern "C" fn shmrt_options_set_fuel(options: ShmrtOptions, fuel: u64) -> i32 {
    with_options(options, |o| {
        o.fuel = (fuel != 0).then_some(fuel);
        Ok(())
    })
}

/// Bytes of memory the guest may make the host allocate (0: no budget).
#[unsafe(no_mangle)]
pub extern "C" fn shmrt_options_set_max_memory(options: ShmrtOptions, bytes: u64) -> i32 {
    with_options(options, |o| {
        o.max_memory = match bytes {
            0 => None,
            n => Some(usize::try_from(n).map_err(|_| {
                Fail::new(
                    SHMRT_ERR_INVALID,
                    format!("max_memory {n} is larger than memory"),
                )
            })?),
        };
        Ok(())
    })
}

/// How long a send waits for a slot the guest holds, in milliseconds
/// (negative: as long as the guest runs).
#[unsafe(no_mangle)]
pub extern "C" fn shmrt_options_set_slot_wait_ms(options: ShmrtOptions, ms: i64) -> i32 {
    with_options(options, |o| {
        o.slot_wait = timeout_of(ms);
        Ok(())
    })
}

/// Data bytes of each ring of the segment.
#[unsafe(no_mangle)]
pub extern "C" fn shmrt_options_set_ring_capacity(options: ShmrtOptions, bytes: u32) -> i32 {
    with_options(options, |o| {
        o.segment.ring_capacity = bytes;
        Ok(())
    })
}

/// The segment's slot classes, smallest first: `n` classes of
/// `counts[i]` slots carrying up to `payloads[i]` bytes (multiples of 4).
///
/// # Safety
///
/// `payloads` and `counts` are valid for reads of `n` values each.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmrt_options_set_slot_classes(
    options: ShmrtOptions,
    payloads: *const u32,
    counts: *const u32,
    n: usize,
) -> i32 {
    let read = || -> Result<SizeClasses, Fail> {
        if n == 0 || payloads.is_null() || counts.is_null() {
            return Err(Fail::new(SHMRT_ERR_INVALID, "give at least one slot class"));
        }
        // SAFETY: not null, `n` values each by the caller's promise.
        let (p, c) = unsafe {
            (
                std::slice::from_raw_parts(payloads, n),
                std::slice::from_raw_parts(counts, n),
            )
        };
        let invalid = |e: shmrt::primitives::LayoutError| {
            Fail::new(SHMRT_ERR_INVALID, format!("slot classes: {e}"))
        };
        let classes: Vec<SizeClass> = p
            .iter()
            .zip(c)
            .map(|(&p, &c)| SizeClass::for_payload(p, c).map_err(invalid))
            .collect::<Result<_, _>>()?;
        SizeClasses::new(&classes).map_err(invalid)
    };
    let classes = read();
    with_options(options, |o| {
        o.segment.size_classes = classes?;
        Ok(())
    })
}

/// Sets configuration `key` to `value` (the plugin reads it by key).
///
/// # Safety
///
/// `key` and `value` are NUL-terminated strings.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmrt_options_set_config(
    options: ShmrtOptions,
    key: *const c_char,
    value: *const c_char,
) -> i32 {
    // SAFETY: the caller's promise.
    let pair = unsafe {
        in_str(key, "key").and_then(|k| Ok((k.to_owned(), in_str(value, "value")?.to_owned())))
    };
    with_options(options, |o| {
        let (key, value) = pair?;
        let mut config: BTreeMap<String, String> = (*o.config).clone();
        config.insert(key, value);
        o.config = Arc::new(config);
        Ok(())
    })
}

/// The user data of a C host function.
struct UserData(*mut c_void);

impl UserData {
    /// The pointer (a method, so that a closure captures the whole
    /// `Send + Sync` wrapper, not its field).
    fn get(&self) -> *mut c_void {
        self.0
    }
}

// SAFETY: the header asks of `shmrt_options_add_host_function`'s caller
// that `user` may be used from any thread (the guest's thread, or the one
// that calls into a fiber or callback guest) for as long as sandboxes
// spawned with these options live.
unsafe impl Send for UserData {}
// SAFETY: as for `Send`: the same promise covers calls from several
// sandboxes' threads at once.
unsafe impl Sync for UserData {}

/// Lends the plugin the host function `name`, called as `f(user, ...)`.
///
/// # Safety
///
/// `name` is a NUL-terminated string; `f` stays callable and `user` valid
/// (and usable from any thread, concurrently) as long as sandboxes spawned
/// with these options live.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmrt_options_add_host_function(
    options: ShmrtOptions,
    name: *const c_char,
    f: ShmrtHostFn,
    user: *mut c_void,
) -> i32 {
    // SAFETY: the caller's promise.
    let name = unsafe { in_str(name, "name") }.map(str::to_owned);
    with_options(options, |o| {
        let name = name?;
        let f = f.ok_or_else(|| null("f"))?;
        let user = UserData(user);
        let label = name.clone();
        let functions = o
            .host_functions
            .get_or_insert_with(|| Arc::new(HostFunctions::new()));
        Arc::make_mut(functions).define(name, move |input, out| {
            let mut output = ShmrtHostOutput {
                output: (out as *mut HostOutput<'_>).cast(),
                message: None,
            };
            // SAFETY: `f` and `user` are valid by the promise made when
            // the function was added; `input` is readable for the call
            // (a view of guest memory, bounds checked); `output` lives
            // across the call.
            let code = unsafe { f(user.get(), input.as_ptr(), input.len(), &mut output) };
            match code {
                0 => Ok(()),
                code => Err(HostFnError::new(
                    code,
                    output
                        .message
                        .unwrap_or_else(|| format!("host function `{label}` failed (code {code})")),
                )),
            }
        });
        Ok(())
    })
}

/// Appends `len` bytes to a host function's output.
///
/// # Safety
///
/// `out` is the pointer the host function was given, during its call;
/// `data` is valid for reads of `len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmrt_host_output_write(
    out: *mut ShmrtHostOutput,
    data: *const u8,
    len: usize,
) -> i32 {
    guard(|| {
        // SAFETY: the caller's promises.
        let (out, data) = unsafe { (out_ref(out, "out")?, in_bytes(data, len, "data")?) };
        // SAFETY: `output` is the `&mut HostOutput` of the running call
        // (made in `shmrt_options_add_host_function`'s closure), which the
        // caller promises is still running.
        let host = unsafe { &mut *out.output.cast::<HostOutput<'_>>() };
        host.write(data);
        Ok(SHMRT_OK)
    })
}

/// Sets the message the guest gets with the host function's error code.
///
/// # Safety
///
/// `out` is the pointer the host function was given, during its call;
/// `message` a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmrt_host_output_error(
    out: *mut ShmrtHostOutput,
    message: *const c_char,
) -> i32 {
    guard(|| {
        // SAFETY: the caller's promises.
        let (out, message) = unsafe { (out_ref(out, "out")?, in_str(message, "message")?) };
        out.message = Some(message.to_owned());
        Ok(SHMRT_OK)
    })
}
