//! Everything that touches PostgreSQL's C API directly: the only module with `unsafe` and raw
//! `pg_sys` calls. The rest of the extension (SQL functions, the backup worker's job, the
//! archive module's logic, the catalog) calls these safe wrappers.
//!
//! - [`bgworker`]: the skeleton of a background worker: launch, signals and configuration
//!   reload, latch waits, postmaster death, a transaction per step with error recovery;
//! - [`spi`]: transactions that survive SQL errors, and a [`backup_core`] SQL session over SPI;
//! - [`archive_hooks`]: the archive module's C entry points.
//!
//! Every function here runs on the backend's main thread only (PostgreSQL's API is not thread
//! safe; pgrx panics off the main thread): threads spawned elsewhere never call in.

pub mod archive_hooks;
pub mod bgworker;
pub mod spi;

use std::path::PathBuf;

use pgrx::pg_sys;

/// The server's data directory (`DataDir`, set for the life of the server).
pub fn data_directory() -> PathBuf {
    // SAFETY: DataDir is a valid C string once the postmaster has started; main thread.
    PathBuf::from(unsafe { std::ffi::CStr::from_ptr(pg_sys::DataDir) }.to_string_lossy().into_owned())
}

/// The directory of the running server's programs (`pg_ctl`, `psql`): where `postgres` is.
pub fn bin_directory() -> PathBuf {
    // SAFETY: my_exec_path is a fixed-size C string set at process start; main thread.
    let exe = PathBuf::from(unsafe { std::ffi::CStr::from_ptr(std::ptr::addr_of!(pg_sys::my_exec_path).cast::<std::ffi::c_char>()) }.to_string_lossy().into_owned());
    exe.parent().map(PathBuf::from).unwrap_or_default()
}

/// The port the live server listens on (`port`).
pub fn server_port() -> i32 {
    // SAFETY: a plain int GUC variable, read on the main thread.
    unsafe { pg_sys::PostPortNumber }
}

/// OID of the database this backend is connected to.
pub fn database_oid() -> u32 {
    // SAFETY: a backend global, set at connection; main thread.
    unsafe { pg_sys::MyDatabaseId.to_u32() }
}

/// This process's pid, as PostgreSQL knows it.
pub fn backend_pid() -> i32 {
    // SAFETY: a backend global set at process start; main thread.
    unsafe { pg_sys::MyProcPid }
}

/// Honour a pending query cancel or terminate (raises the error) while a function waits.
pub fn check_for_interrupts() {
    pg_sys::check_for_interrupts!();
}

/// Re-read the configuration files, as a process does after SIGHUP.
pub fn reload_configuration() {
    // SAFETY: main thread, outside a critical section; how a worker applies a reload.
    unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
}

/// The postmaster asked every process to shut down (a fast or smart shutdown).
pub fn shutdown_requested() -> bool {
    // SAFETY: a flag set by PostgreSQL's signal handlers; reading it is what they are for.
    unsafe { pg_sys::ShutdownRequestPending != 0 }
}

/// Whether the postmaster is still alive (its death pipe is still open).
pub fn postmaster_alive() -> bool {
    // SAFETY: reads the postmaster-death pipe; main thread.
    unsafe { PostmasterIsAliveInternal() }
}

/// End this process, as PostgreSQL processes do when the postmaster dies.
pub fn exit_process(code: i32) -> ! {
    // SAFETY: proc_exit runs the exit callbacks and never returns.
    unsafe { pg_sys::proc_exit(code) }
}

/// Whether this is the postmaster loading `shared_preload_libraries` (the only moment a static
/// background worker can be registered).
pub fn loading_shared_preload_libraries() -> bool {
    // SAFETY: a global flag of the postmaster, read on its main thread.
    unsafe { pg_sys::process_shared_preload_libraries_in_progress }
}

/// Give setting `name` the default `value`, as an environment variable does for PostgreSQL's
/// own settings: below postgresql.conf, `ALTER SYSTEM` and the command line, which still win.
/// A value the setting refuses is left out with a warning rather than stopping the server.
pub fn set_config_default(name: &str, value: &str) {
    let (Ok(cname), Ok(cvalue)) = (std::ffi::CString::new(name), std::ffi::CString::new(value)) else {
        return;
    };
    // SAFETY: called from _PG_init on the postmaster's main thread, after the setting is defined.
    let accepted = pgrx::PgTryBuilder::new(|| {
        unsafe {
            pg_sys::SetConfigOption(cname.as_ptr(), cvalue.as_ptr(), pg_sys::GucContext::PGC_POSTMASTER, pg_sys::GucSource::PGC_S_ENV_VAR)
        };
        true
    })
    .catch_others(|_| false)
    .execute();
    if !accepted {
        pgrx::warning!("pg_backup_ext: ignoring {name} = {value:?} from the environment: not a valid value");
    }
}

unsafe extern "C" {
    /// storage/ipc/pmsignal.c (not in pgrx's bindings): checks the postmaster-death pipe.
    fn PostmasterIsAliveInternal() -> bool;
}
