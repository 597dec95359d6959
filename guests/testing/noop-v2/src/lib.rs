// The no-op guest again, as version 0.2.0 (same provider name): hot-swap tests replace one
// with the other and check which version answers.
include!("../../noop/src/lib.rs");
