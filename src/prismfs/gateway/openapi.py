"""The OpenAPI 3 description of the HTTP API, served at ``/v1/openapi.json``
(and kept in ``docs/api.md``)."""

from __future__ import annotations

from typing import Any

from prismfs import __version__

PROBLEM = {"$ref": "#/components/responses/Problem"}
PATH_PARAM = {
    "name": "path",
    "in": "path",
    "required": True,
    "description": "A path inside the cluster, without its leading slash.",
    "schema": {"type": "string"},
}
NODE_PARAM = {"name": "node", "in": "path", "required": True, "schema": {"type": "string"}}


def _problems(*statuses: int) -> dict[str, Any]:
    return {str(s): PROBLEM for s in (400, 401, 403, 503, *statuses)}


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _flag(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": {"type": "boolean", "default": False},
    }


ENTRY = {"$ref": "#/components/schemas/Entry"}
NODE_CHANGED = {"$ref": "#/components/schemas/NodeChanged"}
FILE_HEADERS = {
    "ETag": {"schema": {"type": "string"}},
    "Last-Modified": {"schema": {"type": "string"}},
}


def openapi_document() -> dict[str, Any]:
    octets = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "PrismFS HTTP API",
            "version": __version__,
            "description": "Files, directories and cluster management of a PrismFS cluster. "
            "Every node serves it; errors are RFC 9457 problem documents.",
        },
        "security": [{"bearer": []}],
        "paths": {
            "/v1/files/{path}": {
                "parameters": [PATH_PARAM],
                "get": {
                    "summary": "Read a file (streamed; one Range supported)",
                    "parameters": [
                        {"name": "Range", "in": "header", "schema": {"type": "string"}},
                        {"name": "If-None-Match", "in": "header", "schema": {"type": "string"}},
                    ],
                    "responses": {
                        "200": {
                            "description": "The file",
                            "headers": FILE_HEADERS,
                            "content": octets,
                        },
                        "206": {"description": "The range", "content": octets},
                        "304": {"description": "Not modified (If-None-Match)"},
                        "416": PROBLEM,
                        **_problems(404, 409),
                    },
                },
                "head": {
                    "summary": "A file's headers (size, ETag, Last-Modified)",
                    "responses": {
                        "200": {"description": "The headers", "headers": FILE_HEADERS},
                        "304": {"description": "Not modified"},
                        "404": {"description": "No such file"},
                        "400": {"description": "Bad request"},
                        "401": {"description": "No or a bad token"},
                        "409": {"description": "A directory"},
                        "503": {"description": "No leader known"},
                    },
                },
                "put": {
                    "summary": "Write a file (streamed; replaces it atomically)",
                    "parameters": [
                        {
                            "name": "If-None-Match",
                            "in": "header",
                            "schema": {"type": "string", "enum": ["*"]},
                        },
                        {"name": "layout", "in": "query", "schema": {"type": "string"}},
                    ],
                    "requestBody": {"content": octets},
                    "responses": {
                        "200": _json("Replaced", ENTRY),
                        "201": _json("Created", ENTRY),
                        "412": PROBLEM,
                        "413": PROBLEM,
                        **_problems(404, 409),
                    },
                },
                "delete": {
                    "summary": "Remove a file",
                    "responses": {"204": {"description": "Removed"}, **_problems(404, 409)},
                },
                "post": {
                    "summary": "Rename a file or directory (op=rename&to=/new/path)",
                    "parameters": [
                        {
                            "name": "op",
                            "in": "query",
                            "required": True,
                            "schema": {"type": "string", "enum": ["rename"]},
                        },
                        {
                            "name": "to",
                            "in": "query",
                            "required": True,
                            "schema": {"type": "string"},
                        },
                        {
                            "name": "If-None-Match",
                            "in": "header",
                            "schema": {"type": "string", "enum": ["*"]},
                        },
                    ],
                    "responses": {
                        "200": _json("Renamed", ENTRY),
                        "412": PROBLEM,
                        **_problems(404, 409),
                    },
                },
            },
            "/v1/dirs": {
                "get": {
                    "summary": "List the root directory",
                    "parameters": _page_params(),
                    "responses": {
                        "200": _json("A page", {"$ref": "#/components/schemas/Listing"}),
                        **_problems(404),
                    },
                },
            },
            "/v1/dirs/{path}": {
                "parameters": [PATH_PARAM],
                "get": {
                    "summary": "List a directory (paginated, with attributes)",
                    "parameters": _page_params(),
                    "responses": {
                        "200": _json("A page", {"$ref": "#/components/schemas/Listing"}),
                        **_problems(404, 409),
                    },
                },
                "put": {
                    "summary": "Make a directory",
                    "parameters": [
                        _flag("parents", "Make missing parents; no error if it exists.")
                    ],
                    "responses": {
                        "200": _json("Existed", ENTRY),
                        "201": _json("Made", ENTRY),
                        **_problems(404, 409),
                    },
                },
                "delete": {
                    "summary": "Remove a directory",
                    "parameters": [_flag("recursive", "Remove everything below it too.")],
                    "responses": {
                        "200": _json("Removed", {"type": "object"}),
                        **_problems(404, 409),
                    },
                },
            },
            "/v1/cluster": {
                "get": {
                    "summary": "The leader's view of the cluster (as prismfs cluster status)",
                    "responses": {"200": _json("Status", {"type": "object"}), **_problems()},
                }
            },
            "/v1/nodes": {
                "get": {
                    "summary": "The node registry",
                    "responses": {"200": _json("Nodes", {"type": "object"}), **_problems()},
                },
                "post": {
                    "summary": "Add a running node (admin)",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/AddNode"}}
                        },
                    },
                    "responses": {"201": _json("Added", NODE_CHANGED), **_problems(404, 409)},
                },
            },
            "/v1/nodes/{node}/drain": {
                "parameters": [NODE_PARAM],
                "post": {
                    "summary": "Drain a node: move its shards, vote and leadership away (admin)",
                    "responses": {"202": _json("Draining", NODE_CHANGED), **_problems(404, 409)},
                },
            },
            "/v1/nodes/{node}/voting": {
                "parameters": [NODE_PARAM],
                "put": {
                    "summary": "Pin a node to the metadata voters, exclude it, or leave it "
                    "to the leader (admin)",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/Voting"}}
                        },
                    },
                    "responses": {"200": _json("Set", NODE_CHANGED), **_problems(404)},
                },
            },
            "/v1/nodes/{node}": {
                "parameters": [NODE_PARAM],
                "delete": {
                    "summary": "Remove a node (admin)",
                    "parameters": [_flag("force", "Even if some chunk cannot do without it.")],
                    "responses": {"200": _json("Removed", NODE_CHANGED), **_problems(404, 409)},
                },
            },
            "/v1/health": {
                "get": {
                    "summary": "Readiness (a leader is known); ?probe=live: liveness",
                    "security": [],
                    "parameters": [
                        {
                            "name": "probe",
                            "in": "query",
                            "schema": {"type": "string", "enum": ["live", "ready"]},
                        }
                    ],
                    "responses": {
                        "200": _json("Ready or live", {"type": "object"}),
                        "503": PROBLEM,
                    },
                }
            },
            "/v1/openapi.json": {
                "get": {
                    "summary": "This document",
                    "security": [],
                    "responses": {"200": _json("OpenAPI 3", {"type": "object"})},
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {
                        "200": {
                            "description": "Text format",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        },
                        **_problems(),
                    },
                }
            },
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "responses": {
                "Problem": {
                    "description": "An RFC 9457 problem document",
                    "content": {
                        "application/problem+json": {
                            "schema": {"$ref": "#/components/schemas/Problem"}
                        }
                    },
                }
            },
            "schemas": {
                "Problem": {
                    "type": "object",
                    "required": ["type", "title", "status"],
                    "properties": {
                        "type": {"type": "string"},
                        "title": {"type": "string"},
                        "status": {"type": "integer"},
                        "detail": {"type": "string"},
                        "code": {"type": "string"},
                    },
                },
                "Entry": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string"},
                        "type": {"type": "string", "enum": ["file", "dir", "symlink", "other"]},
                        "size": {"type": "integer"},
                        "mode": {"type": "string"},
                        "ino": {"type": "integer"},
                        "mtime": {"type": "string"},
                        "mtime_ns": {"type": "integer"},
                        "path": {"type": "string"},
                    },
                },
                "Listing": {
                    "type": "object",
                    "properties": {
                        "path": {"type": "string"},
                        "entries": {"type": "array", "items": ENTRY},
                        "next": {"type": "string", "nullable": True},
                    },
                },
                "Voting": {
                    "type": "object",
                    "required": ["voting"],
                    "properties": {
                        "voting": {"type": "string", "enum": ["auto", "pin", "never"]},
                    },
                },
                "AddNode": {
                    "type": "object",
                    "required": ["address"],
                    "properties": {
                        "address": {"type": "string", "example": "127.0.0.1:7070"},
                        "zone": {"type": "string"},
                        "voter": {"type": "boolean"},
                        "replica": {
                            "type": "boolean",
                            "description": "a non-voting copy of the namespace; "
                            "without it or voter the node is storage-only",
                        },
                    },
                },
                "NodeChanged": {
                    "type": "object",
                    "properties": {
                        "node": {"type": "string"},
                        "address": {"type": "string"},
                        "state": {"type": "string"},
                        "role": {"type": "string"},
                        "shards": {"type": "integer"},
                        "message": {"type": "string"},
                    },
                },
            },
        },
    }


def _page_params() -> list[dict[str, Any]]:
    return [
        {
            "name": "limit",
            "in": "query",
            "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
        },
        {"name": "cursor", "in": "query", "schema": {"type": "string"}},
    ]


if __name__ == "__main__":  # python -m prismfs.gateway.openapi > openapi.json
    import json

    print(json.dumps(openapi_document(), indent=2))
