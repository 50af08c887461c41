"""A real OTLP receiver for the tests, built from the opentelemetry-proto service definitions.

It serves both OTLP transports on loopback:
  - gRPC: ``opentelemetry.proto.collector.{trace,metrics}.v1`` TraceService/MetricsService
    ``Export``, through the generated grpcio stubs;
  - HTTP/protobuf: ``POST /v1/traces`` and ``POST /v1/metrics`` with
    ``application/x-protobuf`` bodies (gzip accepted), decoded with the same messages.

What arrives is kept as plain Python values for assertions. Nothing here knows Aegis.
"""

from __future__ import annotations

import gzip
import http.server
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


@dataclass
class Span:
    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: int
    attributes: Dict[str, object]
    resource: Dict[str, object]
    status_code: int
    transport: str


@dataclass
class Received:
    spans: List[Span] = field(default_factory=list)
    metric_names: Dict[str, str] = field(default_factory=dict)  # name -> transport
    raw_bodies: List[bytes] = field(default_factory=list)


def _value(v) -> object:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    if kind is None:
        return None
    return getattr(v, kind)


def _attrs(kvs) -> Dict[str, object]:
    return {kv.key: _value(kv.value) for kv in kvs}


class OtlpReceiver:
    """Start with ``start()``; ``grpc_endpoint`` and ``http_endpoint`` are base URLs."""

    def __init__(self) -> None:
        self.received = Received()
        self._lock = threading.Lock()
        self._grpc: Optional[grpc.Server] = None
        self._http: Optional[http.server.ThreadingHTTPServer] = None
        self.grpc_endpoint = ""
        self.http_endpoint = ""

    # -- storing ---------------------------------------------------------------------------
    def _store_traces(self, req: trace_service_pb2.ExportTraceServiceRequest, transport: str) -> None:
        with self._lock:
            self.received.raw_bodies.append(req.SerializeToString())
            for rs in req.resource_spans:
                resource = _attrs(rs.resource.attributes)
                for ss in rs.scope_spans:
                    for s in ss.spans:
                        self.received.spans.append(
                            Span(
                                trace_id=s.trace_id.hex(),
                                span_id=s.span_id.hex(),
                                parent_span_id=s.parent_span_id.hex(),
                                name=s.name,
                                kind=s.kind,
                                attributes=_attrs(s.attributes),
                                resource=resource,
                                status_code=s.status.code,
                                transport=transport,
                            )
                        )

    def _store_metrics(self, req: metrics_service_pb2.ExportMetricsServiceRequest, transport: str) -> None:
        with self._lock:
            self.received.raw_bodies.append(req.SerializeToString())
            for rm in req.resource_metrics:
                for sm in rm.scope_metrics:
                    for m in sm.metrics:
                        self.received.metric_names[m.name] = transport

    # -- reading ---------------------------------------------------------------------------
    def spans(self) -> List[Span]:
        with self._lock:
            return list(self.received.spans)

    def metric_names(self) -> Dict[str, str]:
        with self._lock:
            return dict(self.received.metric_names)

    def wait(self, what: str, check: Callable[[], bool], timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"OTLP receiver: timed out after {timeout:.0f} s waiting for {what}; "
                    f"spans: {[(s.name, s.trace_id) for s in self.spans()]}, "
                    f"metrics: {sorted(self.metric_names())}"
                )
            time.sleep(0.05)

    # -- serving ---------------------------------------------------------------------------
    def start(self) -> "OtlpReceiver":
        receiver = self

        class Traces(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request, context):  # noqa: N802 (gRPC method name)
                receiver._store_traces(request, "grpc")
                return trace_service_pb2.ExportTraceServiceResponse()

        class Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
            def Export(self, request, context):  # noqa: N802
                receiver._store_metrics(request, "grpc")
                return metrics_service_pb2.ExportMetricsServiceResponse()

        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Traces(), server)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(Metrics(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        self._grpc = server
        self.grpc_endpoint = f"http://127.0.0.1:{port}"

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.headers.get("Content-Type") != "application/x-protobuf":
                    self.send_error(415, "expected application/x-protobuf")
                    return
                if self.path == "/v1/traces":
                    req = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
                    receiver._store_traces(req, "http")
                    answer = trace_service_pb2.ExportTraceServiceResponse()
                elif self.path == "/v1/metrics":
                    req = metrics_service_pb2.ExportMetricsServiceRequest.FromString(body)
                    receiver._store_metrics(req, "http")
                    answer = metrics_service_pb2.ExportMetricsServiceResponse()
                else:
                    self.send_error(404)
                    return
                payload = answer.SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args) -> None:
                pass

        self._http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._http.serve_forever, daemon=True).start()
        self.http_endpoint = f"http://127.0.0.1:{self._http.server_address[1]}"
        return self

    def stop(self) -> None:
        if self._grpc is not None:
            self._grpc.stop(grace=None)
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
