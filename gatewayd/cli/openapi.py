"""`gatewayd openapi`: print the API's OpenAPI document, byte for byte what `GET /v1/openapi.json`
serves (indented), with no daemon running: client generators read it (clients/typescript's
`npm run check:types` compares its committed types with it)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import msgspec

from gatewayd.api.openapi import document_bytes


def register(sub: Any) -> None:
    p = sub.add_parser(
        "openapi",
        help="print the API's OpenAPI 3.1 document (as GET /v1/openapi.json serves it)",
        description="Print the OpenAPI 3.1 document of the local API, as GET /v1/openapi.json serves it"
        " (indented JSON), without a running daemon.",
    )
    p.add_argument("--output", "-o", type=Path, help="write it to this file instead of standard output")
    p.set_defaults(handler=cmd_openapi)


def cmd_openapi(args: argparse.Namespace) -> int:
    text = msgspec.json.format(document_bytes(), indent=2) + b"\n"
    if args.output is not None:
        args.output.write_bytes(text)
    else:
        sys.stdout.buffer.write(text)
        sys.stdout.flush()
    return 0
