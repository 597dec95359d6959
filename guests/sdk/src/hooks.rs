//! A panic hook that reports the failure through the contract (`context.report-failure`)
//! before the guest traps, so the operator sees a machine code and the panic message rather
//! than a bare trap: a collection larger than wasm32's address space ("capacity overflow",
//! which Rust raises before any allocator is asked) is ResourceExhausted, any other panic
//! Internal. Memory the host refuses is reported by the host itself (its limiter).

use crate::bindings::mcm::driver::context::report_failure;
use crate::{Code, DriverError};

/// Install the hook (once per instance; the runtime makes a fresh instance per call).
pub fn install() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| std::panic::set_hook(Box::new(report)));
}

fn report(info: &std::panic::PanicHookInfo<'_>) {
    let payload = info
        .payload()
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| info.payload().downcast_ref::<String>().map(String::as_str))
        .unwrap_or("");
    let at = info
        .location()
        .map(|l| format!(" at {}:{}", l.file(), l.line()))
        .unwrap_or_default();
    // Rust's own text for a size past isize::MAX (alloc::raw_vec::capacity_overflow).
    let err = if payload == "capacity overflow" {
        DriverError::new(
            Code::ResourceExhausted,
            format!(
                "allocation failed{at}: capacity overflow (a collection larger than the guest's address space)"
            ),
        )
    } else {
        DriverError::new(Code::Internal, format!("panicked{at}: {payload}"))
    };
    // Also on stderr, as the default hook would (the host appends stderr to trap messages).
    eprintln!("{}", err.message);
    report_failure(&err);
}
