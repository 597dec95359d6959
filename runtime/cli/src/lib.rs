//! `mcm-wasm`: inspect and call providers, run the conformance kit, run the machine
//! controller. The composition root: the only crate that wires the sandbox (`mcm-sandbox`)
//! to the controller (`mcm-controller`). `main.rs` only parses and sets up logging.

pub mod artifacts;
pub mod cli;
pub mod conformance;
pub mod controller;
pub mod scaffold;
