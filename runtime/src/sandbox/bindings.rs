//! Host bindings generated from wit/ (kept private; the rest of the runtime uses `driver`).
wasmtime::component::bindgen!({
    path: "../wit",
    world: "provider",
    imports: {
        "mcm:driver/http.send": async | trappable,
        "mcm:driver/credentials.send-aws-sigv4": async | trappable,
        default: trappable,
    },
    exports: { default: async },
});

pub(crate) use mcm::driver::types;
