//! Host bindings generated from wit/: private to this crate (everything outside it uses
//! `mcm_driver`'s types). A leaf module: the capabilities and the engine both use it, it uses
//! neither, so there is no module cycle.
wasmtime::component::bindgen!({
    path: "../../wit",
    world: "provider",
    imports: {
        "mcm:driver/http.send": async | trappable,
        "mcm:driver/credentials.send-aws-sigv4": async | trappable,
        default: trappable,
    },
    exports: { default: async },
});

pub(crate) use mcm::driver::types;
