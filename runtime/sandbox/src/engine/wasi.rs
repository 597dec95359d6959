//! The WASI a guest may import: exactly what a Rust `wasm32-wasip2` guest of the contract
//! imports through std (cli environment/exit/stdio/terminal, io streams/poll/error, clocks,
//! random), each deny-all (see `CallState::new`). Nothing else is linked, and a component that
//! imports anything else — `wasi:filesystem`, `wasi:sockets`, `wasi:http`, an interface of its
//! own — is refused at load naming the import ([`check_imports`]), before it is compiled.
//!
//! Deviation from `wasmtime_wasi::p2::add_to_linker_async`: that links all of WASI p2 and
//! denies at run time; we link the subset. `get-random-bytes` goes through [`LimitedRandom`] so
//! an oversized request is a typed [`LimitExceeded`] (ResourceExhausted), not an untyped trap.

use wasmtime::component::{HasData, Linker};
use wasmtime_wasi::WasiView;
use wasmtime_wasi::cli::{WasiCli, WasiCliView as _};
use wasmtime_wasi::clocks::{WasiClocks, WasiClocksView as _};
use wasmtime_wasi::p2::bindings::{cli, clocks, random};
use wasmtime_wasi::random::{WasiRandom, WasiRandomCtx};

use super::limits::LimitExceeded;

/// Interfaces (package/interface, without version) a provider may import.
pub const ALLOWED_WASI: &[&str] = &[
    "wasi:cli/environment",
    "wasi:cli/exit",
    "wasi:cli/stdin",
    "wasi:cli/stdout",
    "wasi:cli/stderr",
    "wasi:cli/terminal-input",
    "wasi:cli/terminal-output",
    "wasi:cli/terminal-stdin",
    "wasi:cli/terminal-stdout",
    "wasi:cli/terminal-stderr",
    "wasi:io/error",
    "wasi:io/poll",
    "wasi:io/streams",
    "wasi:clocks/wall-clock",
    "wasi:clocks/monotonic-clock",
    "wasi:random/random",
    "wasi:random/insecure",
    "wasi:random/insecure-seed",
];

/// The contract's own imports (the host capabilities).
pub const CONTRACT_IMPORTS: &[&str] = &[
    "mcm:driver/types",
    "mcm:driver/http",
    "mcm:driver/log",
    "mcm:driver/context",
    "mcm:driver/credentials",
];

/// The allowed imports in one line, from the two lists above (for error messages), e.g.
/// `mcm:driver/{types, http, …} and wasi:cli/{environment, …}, wasi:io/{…}, …`.
pub fn allowed_summary() -> String {
    let mut families: Vec<(&str, Vec<&str>)> = Vec::new();
    for name in CONTRACT_IMPORTS.iter().chain(ALLOWED_WASI) {
        let (package, interface) = name.split_once('/').unwrap_or((name, ""));
        match families.iter_mut().find(|(p, _)| *p == package) {
            Some((_, interfaces)) => interfaces.push(interface),
            None => families.push((package, vec![interface])),
        }
    }
    families
        .iter()
        .map(|(package, interfaces)| format!("{package}/{{{}}}", interfaces.join(", ")))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Why an import is refused: the first import outside the two lists above.
pub fn refused_import<'a>(imports: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    imports.into_iter().find(|import| {
        let unversioned = import.split_once('@').map_or(*import, |(name, _)| name);
        !ALLOWED_WASI.contains(&unversioned) && !CONTRACT_IMPORTS.contains(&unversioned)
    })
}

/// Link the allowed WASI subset.
pub(crate) fn add_to_linker<T>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> LimitedRandom<'_>,
) -> wasmtime::Result<()>
where
    T: WasiView + wasmtime_wasi_io::IoView + Send + 'static,
{
    wasmtime_wasi_io::add_to_linker_async(linker)?;
    let l = linker;
    clocks::wall_clock::add_to_linker::<T, WasiClocks>(l, T::clocks)?;
    clocks::monotonic_clock::add_to_linker::<T, WasiClocks>(l, T::clocks)?;
    random::random::add_to_linker::<T, LimitedRandomData>(l, view)?;
    random::insecure::add_to_linker::<T, LimitedRandomData>(l, view)?;
    random::insecure_seed::add_to_linker::<T, WasiRandom>(l, |t| t.ctx().ctx.random())?;
    cli::exit::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::environment::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::stdin::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::stdout::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::stderr::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::terminal_input::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::terminal_output::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::terminal_stdin::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::terminal_stdout::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::terminal_stderr::add_to_linker::<T, WasiCli>(l, T::cli)?;
    Ok(())
}

/// `wasi:random` with the sandbox's per-request byte limit.
pub(crate) struct LimitedRandom<'a> {
    pub ctx: &'a mut WasiRandomCtx,
    pub max_bytes: u64,
}

struct LimitedRandomData;

impl HasData for LimitedRandomData {
    type Data<'a> = LimitedRandom<'a>;
}

impl LimitedRandom<'_> {
    fn check(&self, len: u64) -> wasmtime::Result<()> {
        if len > self.max_bytes {
            return Err(wasmtime::Error::new(LimitExceeded {
                what: "a random-bytes request",
                requested: len,
                limit: self.max_bytes,
            }));
        }
        Ok(())
    }
}

impl random::random::Host for LimitedRandom<'_> {
    fn get_random_bytes(&mut self, len: u64) -> wasmtime::Result<Vec<u8>> {
        self.check(len)?;
        random::random::Host::get_random_bytes(self.ctx, len)
    }

    fn get_random_u64(&mut self) -> wasmtime::Result<u64> {
        random::random::Host::get_random_u64(self.ctx)
    }
}

impl random::insecure::Host for LimitedRandom<'_> {
    fn get_insecure_random_bytes(&mut self, len: u64) -> wasmtime::Result<Vec<u8>> {
        self.check(len)?;
        random::insecure::Host::get_insecure_random_bytes(self.ctx, len)
    }

    fn get_insecure_random_u64(&mut self) -> wasmtime::Result<u64> {
        random::insecure::Host::get_insecure_random_u64(self.ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_names_every_allowed_interface() {
        let summary = allowed_summary();
        assert!(
            summary.starts_with(
                "mcm:driver/{types, http, log, context, credentials}, wasi:cli/{environment, exit,"
            ),
            "{summary}"
        );
        assert!(
            summary.contains("wasi:random/{random, insecure, insecure-seed}"),
            "{summary}"
        );
        assert!(!summary.contains("filesystem") && !summary.contains("sockets"));
    }

    #[test]
    fn only_the_subset_and_the_contract_pass() {
        let std_guest = [
            "wasi:cli/environment@0.2.6",
            "wasi:io/streams@0.2.6",
            "wasi:random/insecure-seed@0.2.4",
            "mcm:driver/http@0.1.0",
        ];
        assert_eq!(refused_import(std_guest), None);
        assert_eq!(
            refused_import(["wasi:cli/exit@0.2.0", "wasi:filesystem/types@0.2.6"]),
            Some("wasi:filesystem/types@0.2.6")
        );
        assert_eq!(
            refused_import(["wasi:sockets/tcp@0.2.0"]),
            Some("wasi:sockets/tcp@0.2.0")
        );
        assert_eq!(
            refused_import(["wasi:http/outgoing-handler@0.2.0"]),
            Some("wasi:http/outgoing-handler@0.2.0")
        );
        assert_eq!(
            refused_import(["mcm:driver/secret-store@0.1.0"]),
            Some("mcm:driver/secret-store@0.1.0")
        );
    }
}
