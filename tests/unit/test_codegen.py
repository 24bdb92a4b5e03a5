"""The committed protobuf modules are what protoc makes from protos/ now."""

from dvla.rpc import codegen


def test_generated_code_is_up_to_date():
    assert codegen.main(["--check"]) == 0, "run: python -m dvla.rpc.codegen"
