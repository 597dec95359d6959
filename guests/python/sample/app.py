"""The sample provider in Python: the twin of guests/sample (Rust), same backend, same answers.

It drives machines through a tiny JSON-over-HTTP cloud API (guests/sample/backend.py):

| call                             | meaning                                    |
|----------------------------------|--------------------------------------------|
| POST /v1/machines                | create (deduplicated by idempotencyKey)    |
| GET /v1/machines?name=N&tag=K=V  | find machines by name and/or tag           |
| GET /v1/machines/{id}            | one machine                                |
| DELETE /v1/machines/{id}         | delete                                     |

Every request carries `Authorization: Bearer <token>` from the secret's `token` key; the API
endpoint comes from the provider config set by the operator: {"endpoint": "http://..."}.
"""
import json
from dataclasses import dataclass, field
from typing import Dict, List, Optional
from urllib.parse import quote

import mcm_wasm_sdk as sdk
from mcm_wasm_sdk import Code, DriverError

PROVIDER_ID_PREFIX = "sample:///"
CSI_DRIVER = "sample.csi.mcm-wasm.io"


@dataclass
class Spec:
    """MachineClass.providerSpec of this provider."""
    machine_type: str
    image: str
    tags: Dict[str, str] = field(default_factory=dict)


def code_for_status(status: int) -> Code:
    """Cloud HTTP status -> machine code (the provider's error mapping table)."""
    table = {400: Code.INVALID_ARGUMENT, 422: Code.INVALID_ARGUMENT, 401: Code.UNAUTHENTICATED,
             403: Code.PERMISSION_DENIED, 404: Code.NOT_FOUND, 409: Code.ALREADY_EXISTS,
             429: Code.UNAVAILABLE, 507: Code.RESOURCE_EXHAUSTED}
    if status in table:
        return table[status]
    return Code.UNAVAILABLE if 500 <= status <= 599 else Code.INTERNAL


def check_spec(machine_class) -> Spec:
    spec = sdk.decode_spec(machine_class, Spec)
    if not spec.machine_type:
        raise DriverError.invalid_argument("providerSpec.machineType must not be empty")
    if not spec.image:
        raise DriverError.invalid_argument("providerSpec.image must not be empty")
    for prefix in ("kubernetes.io/cluster/", "kubernetes.io/role/"):
        if not any(k.startswith(prefix) for k in spec.tags):
            raise DriverError.invalid_argument(f"providerSpec.tags must contain a {prefix}… tag")
    return spec


class Cloud:
    """Everything one operation needs to talk to the cloud."""

    def __init__(self, secret):
        config = sdk.provider_config()
        if not isinstance(config.get("endpoint"), str):
            raise DriverError.invalid_argument("provider config must name the API \"endpoint\"")
        self.endpoint = config["endpoint"].rstrip("/")
        self.token = sdk.require_secret(secret, "token")

    def call(self, method: str, path: str, json_body=None) -> sdk.Response:
        url = f"{self.endpoint}{path}"
        resp = sdk.send(method, url, [("authorization", f"Bearer {self.token}")],
                        json_body=json_body)
        if 200 <= resp.status <= 299:
            return resp
        raise DriverError(code_for_status(resp.status),
                          f"{method} {url} answered {resp.status}: {resp.text().strip()}")

    def find(self, query: str) -> List[dict]:
        return self.call("GET", f"/v1/machines?{query}").json()

    def lookup(self, machine) -> Optional[dict]:
        """The machine's VM: by providerID when known, else by name; more than one is OutOfRange."""
        if machine.provider_id.startswith(PROVIDER_ID_PREFIX):
            vm_id = machine.provider_id[len(PROVIDER_ID_PREFIX):]
            try:
                return self.call("GET", f"/v1/machines/{quote(vm_id)}").json()
            except DriverError as e:
                if e.code == Code.NOT_FOUND:
                    return None
                raise
        found = self.find(f"name={quote(machine.name)}")
        if len(found) > 1:
            raise DriverError(Code.OUT_OF_RANGE,
                              f"{len(found)} VMs are named {machine.name!r}; expected at most one")
        return found[0] if found else None


def provider_id(vm: dict) -> str:
    return f"{PROVIDER_ID_PREFIX}{vm['id']}"


def addresses(vm: dict) -> List[sdk.NodeAddress]:
    return [sdk.NodeAddress("Hostname", vm["hostname"])]


class Sample(sdk.Provider):
    def create_machine(self, req):
        spec = check_spec(req.machine_class)
        cloud = Cloud(req.secret)
        # Idempotent: an existing VM for this machine is returned as is.
        vm = cloud.lookup(req.machine)
        if vm is None:
            user_data = (sdk.secret_value(req.secret, "userData") or b"").decode("utf-8", "replace")
            vm = cloud.call("POST", "/v1/machines", json_body={
                "name": req.machine.name,
                "machineType": spec.machine_type,
                "image": spec.image,
                "tags": spec.tags,
                "userData": user_data,
                "idempotencyKey": f"{req.machine.namespace}/{req.machine.name}",
            }).json()
        sdk.info("machine created", id=vm["id"], machine=req.machine.name)
        return sdk.CreateMachineResponse(provider_id(vm), vm["hostname"], vm.get("state", ""),
                                         addresses(vm))

    def delete_machine(self, req):
        cloud = Cloud(req.secret)
        vm = cloud.lookup(req.machine)
        if vm is None:
            return sdk.DeleteMachineResponse("already gone")
        try:
            cloud.call("DELETE", f"/v1/machines/{quote(vm['id'])}")
        except DriverError as e:
            if e.code == Code.NOT_FOUND:
                return sdk.DeleteMachineResponse("already gone")
            raise
        return sdk.DeleteMachineResponse("deleted")

    def get_machine_status(self, req):
        vm = Cloud(req.secret).lookup(req.machine)
        if vm is None:
            raise DriverError.not_found(f"no VM for machine {req.machine.name!r}")
        return sdk.GetMachineStatusResponse(provider_id(vm), vm["hostname"], addresses(vm))

    def list_machines(self, req):
        spec = check_spec(req.machine_class)
        cloud = Cloud(req.secret)
        key, value = next((k, v) for k, v in spec.tags.items()
                          if k.startswith("kubernetes.io/cluster/"))
        vms = cloud.find(f"tag={quote(key)}={quote(value)}")
        return sdk.ListMachinesResponse([(provider_id(vm), vm["name"]) for vm in vms])

    def get_volume_ids(self, req):
        ids = []
        for text in req.pv_specs:
            try:
                spec = json.loads(text)
            except ValueError as e:
                raise DriverError.invalid_argument(f"invalid PersistentVolumeSpec: {e}")
            csi = spec.get("csi") or {}
            if csi.get("driver") == CSI_DRIVER and isinstance(csi.get("volumeHandle"), str):
                ids.append(csi["volumeHandle"])
        return sdk.GetVolumeIdsResponse(ids)

    def validate_machine_class(self, req):
        check_spec(req.machine_class)
        sdk.require_secret(req.secret, "token")

    def metrics_labels(self, req):
        return [("size", check_spec(req.machine_class).machine_type)]


Driver = sdk.export(Sample)
