//! The C side of `archive_library = 'pg_backup_ext'`: PostgreSQL 15's archive module API.
//! The logic is in [`crate::archive_module`]; these only translate arguments and results.

use std::ffi::{c_char, CStr};

use pgrx::prelude::*;

use crate::archive_module;

#[no_mangle]
#[pg_guard]
pub unsafe extern "C-unwind" fn _PG_archive_module_init(cb: *mut pg_sys::ArchiveModuleCallbacks) {
    // SAFETY: PostgreSQL passes a valid, writable callbacks struct.
    unsafe {
        (*cb).check_configured_cb = Some(check_configured);
        (*cb).archive_file_cb = Some(archive_file);
        (*cb).shutdown_cb = None;
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn check_configured() -> bool {
    archive_module::check_configured()
}

#[pg_guard]
unsafe extern "C-unwind" fn archive_file(file: *const c_char, path: *const c_char) -> bool {
    // SAFETY: PostgreSQL passes two NUL-terminated strings valid for the call.
    let (file, path) = unsafe { (CStr::from_ptr(file).to_string_lossy().into_owned(), CStr::from_ptr(path).to_string_lossy().into_owned()) };
    archive_module::archive_file(&file, &path)
}
