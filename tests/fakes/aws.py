"""Local fakes for the AWS adapter, on 127.0.0.1 only.

* :class:`MotoServer` — moto's ``ThreadedMotoServer`` on a free port. The real boto3
  client reaches it through the source's ``endpoint_url`` option (never through a
  global ``AWS_ENDPOINT_URL``). moto describes instance types with real data and
  answers spot price history with fake constant prices; it lacks the Pricing API and
  spot placement scores (those are tested with botocore's ``Stubber``).
* :class:`StaticHttpServer` — a tiny HTTP server answering GETs from a table of
  canned replies (the Spot Advisor JSON, the bulk price-list files), recording every
  path asked for.
* :func:`use_fake_credentials` / :func:`use_no_credentials` — the AWS environment of a
  test, isolated from the developer's own ``~/.aws`` and from instance metadata.
* Builders of realistic payloads from the recorded files in :data:`RECORDED`.

Use the servers as context managers (or call ``stop()``) so their threads and sockets
are closed: warnings are errors in this repo, and a leaked socket is a ResourceWarning.
"""

from __future__ import annotations

import copy
import json
import os
import socket
import threading
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
from moto.server import ThreadedMotoServer

RECORDED = Path(__file__).resolve().parents[1] / "data" / "aws"
"""Recorded AWS payloads (the project's shared reference collection)."""

SPOT_ADVISOR_FILE = RECORDED / "spot-advisor-data.excerpt.json"
OFFER_FILE_P4D = RECORDED / "pricing" / "offer-file_AmazonEC2_us-east-1.p4d.excerpt.json"
SPOT_HISTORY_EXAMPLE = RECORDED / "ec2" / "DescribeSpotPriceHistory.botocore-example.json"


# -- servers ---------------------------------------------------------------------


class MotoServer:
    """moto in server mode on ``127.0.0.1`` and a free port; ``url`` is its endpoint."""

    def __init__(self) -> None:
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.url = ""

    def start(self) -> MotoServer:
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.url = f"http://{host}:{port}"
        return self

    def stop(self) -> None:
        self._server.stop()
        # ThreadedMotoServer.stop() stops serving but leaves the listening socket open.
        inner = getattr(self._server, "_server", None)
        if inner is not None:
            inner.server_close()

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "application/json"})

    @classmethod
    def file(cls, path: Path) -> Reply:
        return cls(200, path.read_bytes())


class StaticHttpServer:
    """Answers ``GET``/``POST path`` with ``routes[path]`` (404 otherwise) and records each
    request as ``"METHOD path"``."""

    def __init__(self, routes: dict[str, Reply] | None = None) -> None:
        self.routes: dict[str, Reply] = dict(routes or {})
        self.requests: list[str] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                fake.requests.append(f"{self.command} {self.path}")
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                reply = fake.routes.get(self.path.split("?", 1)[0], Reply(404, b"not found"))
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)

            do_POST = do_GET

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        host, port = self._httpd.server_address[:2]
        self.url = f"http://{host!s}:{port}"

    def start(self) -> StaticHttpServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()

    def __enter__(self) -> StaticHttpServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def refused_url() -> str:
    """An http URL on 127.0.0.1 where nothing listens (connections are refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def bulk_price_list_path(region: str) -> str:
    return f"/offers/v1.0/aws/AmazonEC2/current/{region}/index.json"


# -- the AWS environment of a test -----------------------------------------------


def _isolate(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith(("AWS_", "BOTO_")):
            monkeypatch.delenv(name)
    config = tmp_path / "aws-config"
    credentials = tmp_path / "aws-credentials"
    config.write_text("")
    credentials.write_text("")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def use_fake_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Fake static credentials, and nothing from the developer's own AWS set-up."""
    _isolate(monkeypatch, tmp_path)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")


def use_no_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No credentials anywhere: no variables, empty shared files, no instance metadata."""
    _isolate(monkeypatch, tmp_path)


# -- payloads ------------------------------------------------------------------------


def load_json(path: Path) -> Any:
    return json.loads(path.read_text())


def spot_history_rows(**overrides: Any) -> list[dict[str, Any]]:
    """The rows of botocore's DescribeSpotPriceHistory example, as the client returns them
    (``Timestamp`` parsed to an aware datetime), each updated with ``overrides``."""
    rows = load_json(SPOT_HISTORY_EXAMPLE)["SpotPriceHistory"]
    for row in rows:
        row["Timestamp"] = datetime.fromisoformat(row["Timestamp"].replace("Z", "+00:00"))
        row.update(overrides)
    return rows


def price_list_items(offer_file: dict[str, Any]) -> list[str]:
    """A bulk offer file turned into the Pricing API's ``PriceList``: one JSON string per
    product, with ``terms.OnDemand`` holding that product's offers."""
    items = []
    for sku, product in offer_file["products"].items():
        document = {
            "product": product,
            "serviceCode": "AmazonEC2",
            "terms": {"OnDemand": copy.deepcopy(offer_file["terms"]["OnDemand"][sku])},
            "version": offer_file["version"],
            "publicationDate": offer_file["publicationDate"],
        }
        items.append(json.dumps(document))
    return items


def offer_file_for(
    offer_file: dict[str, Any], *, instance_type: str, usd_per_hour: str
) -> dict[str, Any]:
    """A copy of a p4d offer file where every product is ``instance_type`` at a new price."""
    changed = copy.deepcopy(offer_file)
    renamed_products: dict[str, Any] = {}
    renamed_terms: dict[str, Any] = {}
    for sku, product in changed["products"].items():
        new_sku = f"{sku}X"
        product["sku"] = new_sku
        product["attributes"]["instanceType"] = instance_type
        product["attributes"]["usagetype"] = f"BoxUsage:{instance_type}"
        renamed_products[new_sku] = product
        offers = {}
        for code, offer in changed["terms"]["OnDemand"][sku].items():
            offer["sku"] = new_sku
            for dimension in offer["priceDimensions"].values():
                if dimension["pricePerUnit"]["USD"] != "0.0000000000":
                    dimension["pricePerUnit"]["USD"] = usd_per_hour
            offers[code.replace(sku, new_sku)] = offer
        renamed_terms[new_sku] = offers
    changed["products"] = renamed_products
    changed["terms"]["OnDemand"] = renamed_terms
    return changed
