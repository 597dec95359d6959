"""The mcm-wasm guest SDK for Python: write a Gardener MCM machine driver as a component.

The Python twin of the Rust SDK (guests/sdk): the same contract (wit/driver.wit), the same
conveniences. Subclass `Provider`, override the operations your cloud supports, and export it:

    from mcm_wasm_sdk import Provider, DriverError, export

    class MyCloud(Provider):
        def create_machine(self, req): ...
        def delete_machine(self, req): ...

    Driver = export(MyCloud)          # componentize-py looks for `Driver` in the app module

Build with `build.py` beside this package (componentize-py, then the metadata section the
runtime reads: name, version, contract). Every operation you do not override answers
`unimplemented`, which MCM understands.

Errors: raise `DriverError(Code.X, "message")` (or a helper: `DriverError.invalid_argument`,
`.not_found`, `.unavailable`, `.internal`). Any other exception escaping an operation becomes an
`internal` error naming the exception and where it was raised — not a trap.

Deliberate deviation from a Rust guest: Python providers are built with componentize-py's
`--stub-wasi`, so the component imports only the contract (the sandbox refuses WASI
filesystem and sockets imports, which CPython's runtime otherwise brings). `print`, `open`,
`time.time` and `os.urandom` therefore trap; use `log`, `remaining_millis` and the cloud's own
clocks instead. Python's `random` is seeded at build time (never use it for secrets).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import traceback
import typing
from typing import Any, Iterable, List, Optional, Tuple

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import context as _context
from wit_world.imports import http as _http
from wit_world.imports import log as _log
from wit_world.imports import types

#: The contract version this SDK builds against (the `mcm:driver` WIT package version).
CONTRACT_VERSION = "0.1.3"

Code = types.Code
Machine = types.Machine
MachineClass = types.MachineClass
MachineRequest = types.MachineRequest
NodeAddress = types.NodeAddress
CreateMachineResponse = types.CreateMachineResponse
InitializeMachineResponse = types.InitializeMachineResponse
DeleteMachineResponse = types.DeleteMachineResponse
GetMachineStatusResponse = types.GetMachineStatusResponse
ListMachinesRequest = types.ListMachinesRequest
ListMachinesResponse = types.ListMachinesResponse
GetVolumeIdsRequest = types.GetVolumeIdsRequest
GetVolumeIdsResponse = types.GetVolumeIdsResponse
ValidateRequest = types.ValidateRequest
MetricsLabelsRequest = types.MetricsLabelsRequest


class DriverError(Exception):
    """A machine code and a message: what every operation fails with."""

    def __init__(self, code: types.Code, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    @classmethod
    def invalid_argument(cls, message: str) -> "DriverError":
        """The request, class or secret is wrong; retrying will not help."""
        return cls(Code.INVALID_ARGUMENT, message)

    @classmethod
    def not_found(cls, message: str) -> "DriverError":
        """The VM does not exist."""
        return cls(Code.NOT_FOUND, message)

    @classmethod
    def internal(cls, message: str) -> "DriverError":
        """Something the provider did not expect."""
        return cls(Code.INTERNAL, message)

    @classmethod
    def unavailable(cls, message: str) -> "DriverError":
        """A transient failure; MCM retries soon."""
        return cls(Code.UNAVAILABLE, message)

    @classmethod
    def unimplemented(cls, operation: str) -> "DriverError":
        """The provider does not support this operation."""
        return cls(Code.UNIMPLEMENTED, f"{operation} is not implemented by this provider")


class Provider:
    """A machine driver. `create_machine` and `delete_machine` are required by MCM; every other
    operation answers `unimplemented` unless overridden."""

    def create_machine(self, req: MachineRequest) -> CreateMachineResponse:
        raise DriverError.unimplemented("create-machine")

    def delete_machine(self, req: MachineRequest) -> DeleteMachineResponse:
        raise DriverError.unimplemented("delete-machine")

    def initialize_machine(self, req: MachineRequest) -> InitializeMachineResponse:
        raise DriverError.unimplemented("initialize-machine")

    def get_machine_status(self, req: MachineRequest) -> GetMachineStatusResponse:
        raise DriverError.unimplemented("get-machine-status")

    def list_machines(self, req: ListMachinesRequest) -> ListMachinesResponse:
        raise DriverError.unimplemented("list-machines")

    def get_volume_ids(self, req: GetVolumeIdsRequest) -> GetVolumeIdsResponse:
        raise DriverError.unimplemented("get-volume-ids")

    def validate_machine_class(self, req: ValidateRequest) -> None:
        raise DriverError.unimplemented("validate-machine-class")

    def metrics_labels(self, req: MetricsLabelsRequest) -> List[Tuple[str, str]]:
        raise DriverError.unimplemented("metrics-labels")


_OPERATIONS = (
    "create_machine",
    "delete_machine",
    "initialize_machine",
    "get_machine_status",
    "list_machines",
    "get_volume_ids",
    "validate_machine_class",
    "metrics_labels",
)


def _wire_error(e: BaseException) -> types.DriverError:
    """An exception as the contract's driver-error."""
    if isinstance(e, DriverError):
        return types.DriverError(e.code, e.message)
    frame = traceback.extract_tb(e.__traceback__)[-1] if e.__traceback__ else None
    at = f" at {frame.filename}:{frame.lineno}" if frame else ""
    return types.DriverError(Code.INTERNAL, f"{type(e).__name__}{at}: {e}")


def export(provider_class: type) -> type:
    """The class componentize-py exports as `mcm:driver/driver`, calling `provider_class`'s
    operations and turning every exception into a driver-error."""
    provider = provider_class()

    def wrap(name: str):
        def call(self, req):
            try:
                return getattr(provider, name)(req)
            except Exception as e:  # noqa: BLE001 - every outcome must be a driver-error
                raise Err(_wire_error(e))

        call.__name__ = name
        return call

    return type("Driver", (exports.Driver,), {name: wrap(name) for name in _OPERATIONS})


# --- spec decoding ---------------------------------------------------------------------------


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


_JSON_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "a boolean",
               dict: "an object", list: "a list"}


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    for t in (bool, int, float, str, dict, list):
        if isinstance(value, t):
            return _JSON_NAMES[t].split(" ", 1)[1]
    return type(value).__name__


def _check(path: str, value: Any, hint: Any) -> Any:
    """`value` checked against the type hint `hint`; an error names `path`."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union:  # Optional[X]
        if value is None and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
        return _check(path, value, hint)
    if dataclasses.is_dataclass(hint):
        return _decode_object(path, value, hint)
    base = origin or hint
    if base is Any:
        return value
    ok = isinstance(value, base) and not (base in (int, float) and isinstance(value, bool))
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    if not ok:
        raise DriverError.invalid_argument(
            f"{path} must be {_JSON_NAMES.get(base, base.__name__)}, got {_describe(value)}")
    if base is dict and args:
        return {k: _check(f"{path}.{k}", v, args[1]) for k, v in value.items()}
    if base is list and args:
        return [_check(f"{path}[{i}]", v, args[0]) for i, v in enumerate(value)]
    return value


def _decode_object(path: str, value: Any, cls: type) -> Any:
    if not isinstance(value, dict):
        raise DriverError.invalid_argument(f"{path} must be an object, got {_describe(value)}")
    hints = typing.get_type_hints(cls)
    fields = {_camel(f.name): f for f in dataclasses.fields(cls)}
    for key in value:
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise DriverError.invalid_argument(
                f"{path} has unknown field {key!r} (known: {known})")
    kwargs = {}
    for key, field in fields.items():
        if key in value:
            kwargs[field.name] = _check(f"{path}.{key}", value[key], hints[field.name])
        elif (field.default is dataclasses.MISSING
              and field.default_factory is dataclasses.MISSING):
            raise DriverError.invalid_argument(f"{path}.{key} is required")
    return cls(**kwargs)


def decode_spec(machine_class: MachineClass, spec_class: type) -> Any:
    """`providerSpec` decoded into the dataclass `spec_class` (field `machine_type` is JSON key
    `machineType`); a malformed spec is `invalid-argument` naming the class and the field."""
    try:
        value = json.loads(machine_class.provider_spec)
    except ValueError as e:
        raise DriverError.invalid_argument(
            f"machine class {machine_class.name!r}: providerSpec is not JSON: {e}")
    try:
        return _decode_object("providerSpec", value, spec_class)
    except DriverError as e:
        raise DriverError.invalid_argument(f"machine class {machine_class.name!r}: {e.message}")


# --- secret, config, context -----------------------------------------------------------------


def secret_value(secret: Iterable[Tuple[str, bytes]], key: str) -> Optional[bytes]:
    """A key of the merged secret, or None."""
    for k, v in secret:
        if k == key:
            return bytes(v)
    return None


def require_secret(secret: Iterable[Tuple[str, bytes]], key: str) -> str:
    """A key of the merged secret as UTF-8 text, or `invalid-argument` naming it."""
    value = secret_value(secret, key)
    if not value:
        raise DriverError.invalid_argument(f"secret is missing key {json.dumps(key)}")
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise DriverError.invalid_argument(f"secret key {json.dumps(key)} is not UTF-8 text")


def provider_config() -> dict:
    """The provider's own configuration set by the operator (`{}` when unset)."""
    try:
        config = json.loads(_context.provider_config())
    except ValueError as e:
        raise DriverError.invalid_argument(f"invalid provider config: {e}")
    if not isinstance(config, dict):
        raise DriverError.invalid_argument("invalid provider config: not a JSON object")
    return config


def remaining_millis() -> int:
    """Milliseconds left before the host cancels the current call."""
    return _context.remaining_millis()


# --- http ------------------------------------------------------------------------------------


class Response:
    """A cloud answer: `status`, `headers`, `body` (bytes)."""

    def __init__(self, raw: _http.Response):
        self.status = raw.status
        self.headers = raw.headers
        self.body = bytes(raw.body)

    def header(self, name: str) -> Optional[str]:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError as e:
            raise DriverError.internal(
                f"cloud answered {self.status} with a body that is not JSON: {e}")


_HTTP_CODES = {
    "Error_Denied": (Code.PERMISSION_DENIED, "egress denied: {}"),
    "Error_Timeout": (Code.DEADLINE_EXCEEDED, "timed out at the call's deadline"),
    "Error_Connect": (Code.UNAVAILABLE, "connect failed: {}"),
    "Error_TooLarge": (Code.RESOURCE_EXHAUSTED, "response body exceeds the host limit of {} bytes"),
    "Error_InvalidRequest": (Code.INVALID_ARGUMENT, "invalid request: {}"),
    "Error_Other": (Code.UNAVAILABLE, "{}"),
}


RATE_CLASS_HEADER = "mcm-wasm-rate-class"


def send(method: str, url: str, headers: Optional[List[Tuple[str, str]]] = None,
         body: bytes = b"", json_body: Any = None, rate_class: Optional[str] = None) -> Response:
    """Send a request through the host's http capability (the only way out of the sandbox).
    `json_body` is serialised and sets content-type. `rate_class` names the host's rate
    bucket for the request (e.g. the cloud API's action; the host removes the header). A
    transport failure (egress denied, deadline, connect) raises DriverError with the code the
    Rust SDK gives it."""
    headers = list(headers or [])
    if rate_class:
        headers.append((RATE_CLASS_HEADER, rate_class))
    if json_body is not None:
        body = json.dumps(json_body).encode()
        headers.append(("content-type", "application/json"))
    try:
        raw = _http.send(_http.Request(method, url, headers, body))
    except Err as e:
        code, text = _HTTP_CODES[type(e.value).__name__]
        raise DriverError(code, text.format(getattr(e.value, "value", "")))
    return Response(raw)


# --- log -------------------------------------------------------------------------------------


def _emit(level: Any, message: str, fields: dict) -> None:
    _log.log(level, message, [(str(k), str(v)) for k, v in fields.items()])


def debug(message: str, **fields: Any) -> None:
    _emit(_log.Level.DEBUG, message, fields)


def info(message: str, **fields: Any) -> None:
    _emit(_log.Level.INFO, message, fields)


def warn(message: str, **fields: Any) -> None:
    """A warning: the controller also records it as a `ProviderWarning` event on the Machine."""
    _emit(_log.Level.WARN, message, fields)


def error(message: str, **fields: Any) -> None:
    _emit(_log.Level.ERROR, message, fields)
