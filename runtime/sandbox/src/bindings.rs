//! Host bindings generated from wit/: private to this crate (everything outside it uses
//! `mcm_driver`'s types). A leaf module: the capabilities and the engine both use it, it uses
//! neither, so there is no module cycle.
wasmtime::component::bindgen!({
    path: "../../wit",
    world: "provider",
    imports: {
        "mcm:driver/http.send": async | trappable,
        "mcm:driver/http.send-many": async | trappable,
        "mcm:driver/credentials.send-aws-sigv4": async | trappable,
        default: trappable,
    },
    exports: { default: async },
});

pub(crate) use mcm::driver::types;

/// The optional `mcm:driver/batch` export (contract 0.1.2, world `batch-provider`), on the
/// interfaces and types above: only its export is used (`exports::mcm::driver::batch`).
pub(crate) mod batch {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "batch-provider",
        exports: { default: async },
        with: {
            "mcm:driver/types": super::mcm::driver::types,
            "mcm:driver/http": super::mcm::driver::http,
            "mcm:driver/log": super::mcm::driver::log,
            "mcm:driver/context": super::mcm::driver::context,
            "mcm:driver/credentials": super::mcm::driver::credentials,
        },
    });
}
