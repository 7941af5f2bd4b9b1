"""A local Secret Manager: a gRPC server for the one call the exporter makes,
`google.cloud.secretmanager.v1.SecretManagerService/AccessSecretVersion`, after
its published API reference (cloud.google.com/secret-manager/docs/reference/rpc):

- `name` is `projects/*/secrets/*/versions/*`, the version a number or `latest`
  (the most recently created version); anything else is INVALID_ARGUMENT;
- an unknown secret or version is NOT_FOUND; a disabled or destroyed version
  is FAILED_PRECONDITION;
- the response names the version it resolved (a number, never `latest`) and
  carries the payload with its CRC32C (`data_crc32c`).

No emulator of Secret Manager is published, and the client library ships no
servicer, so the service is a generic gRPC handler over the library's own
request and response messages. The official client reaches it through a
transport on an insecure channel to this server.
"""
from __future__ import annotations

import re
from concurrent import futures

import google_crc32c
import grpc
from google.cloud.secretmanager_v1 import types

SERVICE = "google.cloud.secretmanager.v1.SecretManagerService"
NAME = re.compile(r"projects/([^/]+)/secrets/([^/]+)/versions/(latest|[1-9][0-9]*)")
ENABLED, DISABLED, DESTROYED = "ENABLED", "DISABLED", "DESTROYED"


class SecretManagerServer:
    def __init__(self):
        # (project, secret) -> [(payload, state)], version n at index n - 1
        self.secrets: dict[tuple[str, str], list[list]] = {}
        self.accessed: list[str] = []  # the names asked for
        self.corrupt = False  # answer a CRC32C that does not match the payload
        self._server: grpc.Server | None = None

    def add_version(self, project: str, secret: str, payload: bytes,
                    state: str = ENABLED) -> str:
        versions = self.secrets.setdefault((project, secret), [])
        versions.append([payload, state])
        return f"projects/{project}/secrets/{secret}/versions/{len(versions)}"

    def start(self) -> str:
        handler = grpc.method_handlers_generic_handler(SERVICE, {
            "AccessSecretVersion": grpc.unary_unary_rpc_method_handler(
                self._access, request_deserializer=types.AccessSecretVersionRequest.deserialize,
                response_serializer=types.AccessSecretVersionResponse.serialize)})
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        self._server.add_generic_rpc_handlers((handler,))
        port = self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()
        return f"127.0.0.1:{port}"

    def stop(self) -> None:
        if self._server:
            self._server.stop(grace=None)

    def client(self, address: str):
        """The official client, its gRPC transport on a channel to this server."""
        from google.cloud import secretmanager
        from google.cloud.secretmanager_v1.services.secret_manager_service.transports import (
            SecretManagerServiceGrpcTransport)

        return secretmanager.SecretManagerServiceClient(
            transport=SecretManagerServiceGrpcTransport(channel=grpc.insecure_channel(address)))

    def _access(self, request, context):
        self.accessed.append(request.name)
        match = NAME.fullmatch(request.name)
        if not match:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"Invalid resource field value in the request: {request.name}")
        project, secret, version = match.groups()
        versions = self.secrets.get((project, secret))
        if not versions:
            context.abort(grpc.StatusCode.NOT_FOUND,
                          f"Secret [projects/{project}/secrets/{secret}] not found or has no "
                          f"versions.")
        number = len(versions) if version == "latest" else int(version)
        if number > len(versions):
            context.abort(grpc.StatusCode.NOT_FOUND, f"Secret Version [{request.name}] not found.")
        payload, state = versions[number - 1]
        resolved = f"projects/{project}/secrets/{secret}/versions/{number}"
        if state != ENABLED:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          f"Secret Version [{resolved}] is in {state} state.")
        checksum = google_crc32c.value(payload) ^ (1 if self.corrupt else 0)
        return types.AccessSecretVersionResponse(
            name=resolved, payload=types.SecretPayload(data=payload, data_crc32c=checksum))
