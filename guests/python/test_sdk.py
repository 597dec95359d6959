"""Unit tests of mcm_wasm_sdk's pure parts in plain CPython, against the real bindings
componentize-py generates for wit/ (`componentize-py bindings`, into a temporary directory);
the host imports are replaced per test. Run: python3 test_sdk.py (the cargo test
`python_sdk_unit_tests` runs it). The SDK inside the sandbox is tested by the sample's tests.
"""
import dataclasses
import os
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path
from typing import Dict, List, Optional

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import build  # noqa: E402  (finds componentize-py)

BINDINGS = tempfile.mkdtemp(prefix="mcm-wasm-py-bindings-")
subprocess.run([build.componentize_py(), "--quiet", "-d", str(HERE.parent.parent / "wit"), "-w",
                "provider", "bindings", BINDINGS], check=True)
sys.path.insert(0, BINDINGS)

import mcm_wasm_sdk as sdk  # noqa: E402
from componentize_py_types import Err  # noqa: E402
from wit_world.imports import http, types  # noqa: E402


@dataclasses.dataclass
class Spec:
    machine_type: str
    image: str
    tags: Dict[str, str] = dataclasses.field(default_factory=dict)
    disk_gib: Optional[int] = None
    zones: List[str] = dataclasses.field(default_factory=list)


def machine_class(spec_json: str) -> types.MachineClass:
    return types.MachineClass("c1", "sample", spec_json, None)


class DecodeSpec(unittest.TestCase):
    def decode_error(self, spec_json: str) -> str:
        with self.assertRaises(sdk.DriverError) as caught:
            sdk.decode_spec(machine_class(spec_json), Spec)
        self.assertEqual(caught.exception.code, types.Code.INVALID_ARGUMENT)
        return caught.exception.message

    def test_a_good_spec_decodes_with_camel_case_keys(self):
        spec = sdk.decode_spec(machine_class(
            '{"machineType": "small", "image": "i", "diskGib": 20, "zones": ["a"]}'), Spec)
        self.assertEqual(spec, Spec("small", "i", {}, 20, ["a"]))

    def test_errors_name_the_class_and_the_field(self):
        self.assertEqual(self.decode_error('{"machineType": 5, "image": "i"}'),
                         "machine class 'c1': providerSpec.machineType must be a string, got integer")
        self.assertIn("providerSpec.image is required", self.decode_error('{"machineType": "s"}'))
        self.assertIn("providerSpec has unknown field 'imgae'",
                      self.decode_error('{"machineType": "s", "image": "i", "imgae": "x"}'))
        self.assertIn("providerSpec.tags.role must be a string, got integer",
                      self.decode_error('{"machineType": "s", "image": "i", "tags": {"role": 1}}'))
        self.assertIn("providerSpec.zones[1] must be a string, got null",
                      self.decode_error('{"machineType": "s", "image": "i", "zones": ["a", null]}'))
        self.assertIn("providerSpec.diskGib must be an integer, got boolean",
                      self.decode_error('{"machineType": "s", "image": "i", "diskGib": true}'))
        self.assertIn("providerSpec must be an object, got string", self.decode_error('"text"'))
        self.assertIn("providerSpec is not JSON", self.decode_error("{nope"))


class Export(unittest.TestCase):
    class Cloud(sdk.Provider):
        def create_machine(self, req):
            return {}["missing"]

        def delete_machine(self, req):
            raise sdk.DriverError.not_found("no VM")

    def setUp(self):
        self.driver = sdk.export(self.Cloud)()

    def wire_error(self, operation: str) -> types.DriverError:
        with self.assertRaises(Err) as caught:
            getattr(self.driver, operation)(None)
        return caught.exception.value

    def test_a_driver_error_keeps_its_code(self):
        self.assertEqual(self.wire_error("delete_machine"),
                         types.DriverError(types.Code.NOT_FOUND, "no VM"))

    def test_any_other_exception_is_internal_naming_it_and_its_line(self):
        e = self.wire_error("create_machine")
        self.assertEqual(e.code, types.Code.INTERNAL)
        self.assertRegex(e.message, r"^KeyError at .*test_sdk\.py:\d+: 'missing'$")

    def test_operations_not_overridden_are_unimplemented(self):
        e = self.wire_error("get_machine_status")
        self.assertEqual(e, types.DriverError(
            types.Code.UNIMPLEMENTED, "get-machine-status is not implemented by this provider"))


class HostCalls(unittest.TestCase):
    def test_transport_failures_raise_with_the_rust_sdks_codes(self):
        cases = [
            (http.Error_Denied("example.com:443 is not allowed"), types.Code.PERMISSION_DENIED,
             "egress denied: example.com:443 is not allowed"),
            (http.Error_Timeout(), types.Code.DEADLINE_EXCEEDED, "timed out at the call's deadline"),
            (http.Error_TooLarge(1024), types.Code.RESOURCE_EXHAUSTED,
             "response body exceeds the host limit of 1024 bytes"),
        ]
        for error, code, message in cases:
            def failing_send(req, error=error):
                raise Err(error)
            sdk._http.send = failing_send
            with self.assertRaises(sdk.DriverError) as caught:
                sdk.send("GET", "http://example.com/")
            self.assertEqual((caught.exception.code, caught.exception.message), (code, message))

    def test_json_bodies_and_answers(self):
        sent = []

        def echo(req):
            sent.append(req)
            return http.Response(201, [("Content-Type", "application/json")], b'{"id": "vm-1"}')
        sdk._http.send = echo
        resp = sdk.send("POST", "http://x/v1", [("authorization", "Bearer t")], json_body={"a": 1})
        self.assertEqual(sent[0].headers, [("authorization", "Bearer t"), ("content-type", "application/json")])
        self.assertEqual(sent[0].body, b'{"a": 1}')
        self.assertEqual((resp.status, resp.json(), resp.header("content-type")),
                         (201, {"id": "vm-1"}, "application/json"))

    def test_secrets_and_config(self):
        secret = [("token", b"t0k"), ("bad", b"\xff")]
        self.assertEqual(sdk.require_secret(secret, "token"), "t0k")
        with self.assertRaises(sdk.DriverError) as caught:
            sdk.require_secret(secret, "userData")
        self.assertEqual(caught.exception.message, 'secret is missing key "userData"')
        with self.assertRaises(sdk.DriverError):
            sdk.require_secret(secret, "bad")
        sdk._context.provider_config = lambda: '{"endpoint": "http://127.0.0.1:1"}'
        self.assertEqual(sdk.provider_config(), {"endpoint": "http://127.0.0.1:1"})
        sdk._context.provider_config = lambda: "[1]"
        with self.assertRaises(sdk.DriverError):
            sdk.provider_config()


if __name__ == "__main__":
    unittest.main(verbosity=1)
