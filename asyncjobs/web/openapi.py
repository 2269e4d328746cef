"""The OpenAPI 3.1 description of the control API, served at ``/api/openapi.json``.

A test validates real responses against these schemas, so this document cannot drift from
what the host actually sends.
"""

from __future__ import annotations

from typing import Any

_ISO = {"type": ["string", "null"], "format": "date-time"}
_ERROR_INFO = {"type": ["object", "null"], "required": ["type", "message"],
               "properties": {"type": {"type": "string"}, "message": {"type": "string"}}}
_STATUS = {"type": "string", "enum": ["pending", "running", "completed", "failed", "cancelled"]}

_JOB_SUMMARY: dict[str, Any] = {
    "type": "object",
    "required": ["id", "class", "method", "args", "kwargs", "status", "priority", "attempts",
                 "max_attempts", "timeout", "created_at", "run_at", "started_at",
                 "finished_at", "result", "error", "progress", "chain_id", "unique_key"],
    "properties": {
        "id": {"type": "integer"},
        "class": {"type": "string"},
        "method": {"type": "string"},
        "args": {"type": "array"},
        "kwargs": {"type": "object"},
        "status": _STATUS,
        "priority": {"type": "string", "enum": ["high", "medium", "low"]},
        "attempts": {"type": "integer"},
        "max_attempts": {"type": "integer"},
        "timeout": {"type": "number"},
        "created_at": {"type": "string", "format": "date-time"},
        "run_at": _ISO, "started_at": _ISO, "finished_at": _ISO,
        "result": {},
        "error": _ERROR_INFO,
        "progress": {"type": ["object", "null"], "required": ["fraction", "message"],
                     "properties": {"fraction": {"type": "number"},
                                    "message": {"type": ["string", "null"]}}},
        "chain_id": {"type": ["integer", "null"]},
        "unique_key": {"type": ["string", "null"]},
    },
}
_ATTEMPT = {
    "type": "object",
    "required": ["number", "outcome", "started_at", "finished_at", "exit_code", "error",
                 "output", "strays"],
    "properties": {
        "number": {"type": "integer"},
        "host": {"type": ["string", "null"],
                 "description": "id of the host that ran the attempt (GET /api/hosts)"},
        "outcome": {"type": "string", "enum": ["running", "completed", "failed", "timeout",
                                               "cancelled", "crashed", "interrupted"]},
        "started_at": {"type": "string", "format": "date-time"},
        "finished_at": _ISO,
        "exit_code": {"type": ["integer", "null"]},
        "error": {"type": ["object", "null"], "required": ["type", "message", "traceback"],
                  "properties": {"type": {"type": "string"}, "message": {"type": "string"},
                                 "traceback": {"type": ["string", "null"]}}},
        "output": {"type": "string"},
        "strays": {"type": "integer", "minimum": 0,
                   "description": "processes the job left running, killed when the attempt "
                                  "ended"},
    },
}
_JOB = {"allOf": [{"$ref": "#/components/schemas/JobSummary"}, {
    "type": "object", "required": ["attempt_history"],
    "properties": {"attempt_history": {"type": "array",
                                       "items": {"$ref": "#/components/schemas/Attempt"}}}}]}
# What a job's arguments may hold (registry.check_json): any JSON, numbers within the 64-bit
# integer range (beyond it orjson could not keep an integer exact), nested at most 64 deep.
_JSON_VALUE = {"anyOf": [
    {"type": ["null", "boolean", "string"]},
    {"type": "number", "minimum": -(2**63), "maximum": 2**64 - 1},
    {"type": "array", "items": {"$ref": "#/components/schemas/JSONValue"}},
    {"type": "object", "additionalProperties": {"$ref": "#/components/schemas/JSONValue"}}]}
_ARGS = {"type": "array", "items": {"$ref": "#/components/schemas/JSONValue"}}
_KWARGS = {"type": "object", "additionalProperties": {"$ref": "#/components/schemas/JSONValue"}}
_STEP = {"type": "object", "required": ["class", "method"], "additionalProperties": False,
         "properties": {"class": {"type": "string"}, "method": {"type": "string"},
                        "args": _ARGS, "kwargs": _KWARGS}}
_SUBMIT = {
    "type": "object", "required": ["class", "method"], "additionalProperties": False,
    "not": {"required": ["delay", "run_at"]},  # one or the other
    "properties": {
        "class": {"type": "string"}, "method": {"type": "string"},
        "args": _ARGS, "kwargs": _KWARGS,
        "priority": {"type": "string", "enum": ["high", "medium", "low"]},
        "delay": {"type": "number", "minimum": 0, "maximum": 10 * 365 * 86400},
        "run_at": {"type": "string", "format": "date-time",
                   "description": "at most ten years from now, as delay"},
        "timeout": {"type": "number", "exclusiveMinimum": 0, "maximum": 30 * 86400},
        "max_attempts": {"type": "integer", "minimum": 1, "maximum": 1000},
        "then": {"type": "array", "items": {"$ref": "#/components/schemas/Step"}},
        "unique_key": {"type": "string", "minLength": 1, "maxLength": 200},
    },
}
_ERROR = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["code", "message"],
    "properties": {"code": {"type": "string"}, "message": {"type": "string"},
                   "details": {"type": "object", "description": "the error's attributes, "
                               "e.g. field and problem of invalid_field"}}}}}
_STATS = {
    "type": "object", "required": ["counts", "classes", "throughput", "workers", "uptime"],
    "properties": {
        "counts": {"type": "object", "additionalProperties": {"type": "integer"}},
        "classes": {"type": "object", "additionalProperties": {
            "type": "object", "additionalProperties": {"type": "integer"}}},
        "throughput": {"type": "object", "required": ["last_minute", "last_hour", "per_minute"],
                       "properties": {
                           "last_minute": {"type": "integer"},
                           "last_hour": {"type": "integer"},
                           "per_minute": {"type": "array", "items": {
                               "type": "object", "required": ["minute", "completed", "failed"],
                               "properties": {"minute": {"type": "string"},
                                              "completed": {"type": "integer"},
                                              "failed": {"type": "integer"}}}}}},
        "workers": {"type": "object", "required": ["running", "max"],
                    "properties": {"running": {"type": "integer"}, "max": {"type": "integer"}}},
        "uptime": {"type": "number"},
        "store": {"type": "string",
                  "description": "sqlite, or the store URL with any password as ***"},
    },
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {400: "Malformed request", 401: "Missing or wrong token",
            403: "Refused (not_allowed, bad_origin, bad_host)", 404: "No such job",
            409: "Wrong state for this operation", 413: "Body too large",
            422: "Invalid field", 503: "Shutting down or storage unavailable"}
    return {str(c): _json(_ref("Error"), text[c]) for c in (401, 403, *codes)}


_ID = {"name": "job_id", "in": "path", "required": True,
       "schema": {"type": "integer", "minimum": 1, "maximum": 2**63 - 1}}

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "asyncjobs control API", "version": "1",
             "description": "Every request needs 'Authorization: Bearer <token>' (the token is "
                            "in <data_dir>/token, or a dashboard session) except "
                            "/api/health and /api/sessions."},
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {"JobSummary": _JOB_SUMMARY, "Job": _JOB, "Attempt": _ATTEMPT,
                    "Submit": _SUBMIT, "Step": _STEP, "Error": _ERROR, "Stats": _STATS,
                    "JSONValue": _JSON_VALUE},
    },
    "security": [{"bearer": []}],
    "paths": {
        "/api/jobs": {
            "post": {"summary": "Submit one job", "operationId": "submit",
                     "requestBody": {"required": True, "content": {
                         "application/json": {"schema": _ref("Submit")}}},
                     "responses": {
                         "201": _json({"type": "object", "required": ["id", "status"],
                                       "properties": {"id": {"type": "integer"},
                                                      "status": _STATUS}}, "Created"),
                         "200": _json({"type": "object", "required": ["id", "status",
                                                                      "duplicate"],
                                       "properties": {"id": {"type": "integer"},
                                                      "status": _STATUS,
                                                      "duplicate": {"const": True}}},
                                      "A job with the same unique_key is pending or running"),
                         **_errors(400, 413, 422, 503)}},
            "get": {"summary": "List jobs, newest first", "operationId": "list",
                    "parameters": [
                        {"name": "status", "in": "query", "schema": _STATUS},
                        {"name": "class", "in": "query", "schema": {"type": "string"}},
                        {"name": "chain", "in": "query", "description":
                         "only the steps of the chain with this chain_id",
                         "schema": {"type": "integer", "minimum": 1, "maximum": 2**63 - 1}},
                        {"name": "limit", "in": "query",
                         "schema": {"type": "integer", "minimum": 1, "maximum": 500}},
                        {"name": "cursor", "in": "query",
                         "schema": {"type": "string", "pattern": "^([1-9][0-9]{0,18})?$"}}],
                    "responses": {"200": _json({
                        "type": "object", "required": ["jobs", "next_cursor"],
                        "properties": {"jobs": {"type": "array", "items": _ref("JobSummary")},
                                       "next_cursor": {"type": ["string", "null"]}}},
                        "A page of jobs"), **_errors(422)}},
        },
        "/api/jobs/batch": {
            "post": {"summary": "Submit many jobs in one transaction", "operationId": "batch",
                     "requestBody": {"required": True, "content": {"application/json": {
                         "schema": {"type": "object", "required": ["jobs"],
                                    "additionalProperties": False,
                                    "properties": {"jobs": {"type": "array", "minItems": 1,
                                                            "maxItems": 10000,
                                                            "items": _ref("Submit")}}}}}},
                     "responses": {"201": _json({
                         "type": "object", "required": ["ids", "duplicates"],
                         "properties": {"ids": {"type": "array", "items": {"type": "integer"}},
                                        "duplicates": {"type": "array",
                                                       "items": {"type": "integer"}}}},
                         "Created"), **_errors(400, 413, 422, 503)}},
        },
        "/api/jobs/{job_id}": {"get": {
            "summary": "One job with its attempts", "operationId": "get", "parameters": [_ID],
            "responses": {"200": _json(_ref("Job"), "The job"), **_errors(404, 422)}}},
        "/api/jobs/{job_id}/cancel": {"post": {
            "summary": "Cancel a pending or running job", "operationId": "cancel",
            "parameters": [_ID],
            "responses": {"200": _json(_ref("Job"), "The cancelled job"),
                          **_errors(404, 409, 422, 503)}}},
        "/api/jobs/{job_id}/retry": {"post": {
            "summary": "Retry a failed or cancelled job", "operationId": "retry",
            "parameters": [_ID],
            "responses": {"200": _json(_ref("Job"), "The requeued job"),
                          **_errors(404, 409, 422, 503)}}},
        "/api/jobs/{job_id}/wait": {"get": {
            "summary": "Long-poll until the job is finished or the timeout passes",
            "operationId": "wait",
            "parameters": [_ID, {"name": "timeout", "in": "query",
                                 "schema": {"type": "number", "minimum": 0, "maximum": 3600}}],
            "responses": {"200": _json(_ref("Job"), "The job, finished or not"),
                          **_errors(404, 422)}}},
        "/api/stats": {"get": {"summary": "Counts, throughput and workers",
                               "operationId": "stats",
                               "responses": {"200": _json(_ref("Stats"), "Statistics"),
                                             **_errors()}}},
        "/api/logs": {"get": {
            "summary": "Tail of jobs.log or jobs_errors.log", "operationId": "logs",
            "parameters": [
                {"name": "file", "in": "query", "schema": {"enum": ["jobs", "errors"]}},
                {"name": "lines", "in": "query",
                 "schema": {"type": "integer", "minimum": 1, "maximum": 10000}},
                {"name": "job", "in": "query", "schema": {"type": "integer", "minimum": 1}}],
            "responses": {"200": _json({
                "type": "object", "required": ["file", "lines"],
                "properties": {"file": {"type": "string"},
                               "lines": {"type": "array", "items": {"type": "string"}}}},
                "Log lines, oldest first"), **_errors(422)}}},
        "/api/events": {"get": {
            "summary": "Server-sent events: 'job' on every state change, 'progress'; "
                       "'overflow' ends a stream that fell behind (reconnect and reload)",
            "operationId": "events",
            "parameters": [{"name": "ticket", "in": "query", "required": False,
                            "description": "instead of the Authorization header: a ticket "
                                           "from POST /api/events/tickets",
                            "schema": {"type": "string"}}],
            "responses": {"200": {"description": "An event stream",
                                  "content": {"text/event-stream": {"schema": {
                                      "type": "string"}}}}, **_errors(503)}}},
        "/api/schedules": {"get": {
            "summary": "Recurring schedules with their next run", "operationId": "schedules",
            "responses": {"200": _json({
                "type": "object", "required": ["schedules"],
                "properties": {"schedules": {"type": "array", "items": {
                    "type": "object",
                    "required": ["name", "class", "method", "args", "kwargs", "expression",
                                 "next_run", "last_run", "last_job_id"],
                    "properties": {"name": {"type": "string"}, "class": {"type": "string"},
                                   "method": {"type": "string"}, "args": {"type": "array"},
                                   "kwargs": {"type": "object"},
                                   "expression": {"type": "string"}, "next_run": _ISO,
                                   "last_run": _ISO,
                                   "last_job_id": {"type": ["integer", "null"]}}}}}},
                "Schedules"), **_errors()}}},
        "/api/hosts": {"get": {
            "summary": "The hosts sharing this store, with their heartbeats",
            "operationId": "hosts",
            "responses": {"200": _json({
                "type": "object", "required": ["hosts"],
                "properties": {"hosts": {"type": "array", "items": {
                    "type": "object",
                    "required": ["id", "url", "pid", "hostname", "started_at", "heartbeat_at",
                                 "alive", "state", "running", "leader", "this"],
                    "properties": {"id": {"type": "string"}, "url": {"type": "string"},
                                   "pid": {"type": "integer"}, "hostname": {"type": "string"},
                                   "started_at": _ISO, "heartbeat_at": _ISO,
                                   "alive": {"type": "boolean"},
                                   "state": {"enum": ["alive", "stopped", "gone"],
                                             "description": "stopped: shut down cleanly; "
                                             "gone: its lease ran out (it died)"},
                                   "running": {"type": "integer"},
                                   "leader": {"type": "boolean", "description":
                                              "runs schedules, the pruner and rescues now"},
                                   "this": {"type": "boolean"}}}}}},
                "Hosts"), **_errors()}}},
        "/api/prune": {"post": {
            "summary": "Apply the retention rules now", "operationId": "prune",
            "responses": {"200": _json({
                "type": "object", "required": ["pruned"],
                "properties": {"pruned": {"type": "object", "additionalProperties": {
                    "type": "integer"}}}}, "How many job records were deleted, per rule"),
                **_errors(503)}}},
        "/api/backup": {"post": {
            "summary": "A consistent copy of the live SQLite store (online backup)",
            "description": "Taken from one read snapshot while intake goes on; the body is "
                           "the database file. PostgreSQL stores: use pg_dump.",
            "operationId": "backup",
            "responses": {"200": {"description": "The copy, a SQLite database file",
                                  "content": {"application/vnd.sqlite3": {
                                      "schema": {"type": "string", "format": "binary"}}}},
                          **_errors(503)}}},
        "/api/health": {"get": {
            "summary": "Liveness; no token needed", "operationId": "health", "security": [],
            "responses": {"200": _json({"type": "object", "required": ["status", "accepting"],
                                        "properties": {"status": {"type": "string"},
                                                       "accepting": {"type": "boolean"}}},
                                       "Alive")}}},
        "/api/login-links": {"post": {
            "summary": "A one-time dashboard sign-in link", "operationId": "loginLink",
            "responses": {"201": _json({"type": "object", "required": ["path", "expires_in"],
                                        "properties": {"path": {"type": "string"},
                                                       "expires_in": {"type": "number"}}},
                                       "Created"), **_errors()}}},
        "/api/sessions": {"post": {
            "summary": "Trade a sign-in code (once) for a dashboard session token",
            "operationId": "createSession", "security": [],
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "required": ["code"],
                "properties": {"code": {"type": "string"}}}}}},
            "responses": {"201": _json({"type": "object", "required": ["session", "expires_in"],
                                        "properties": {"session": {"type": "string"},
                                                       "expires_in": {"type": "number"}}},
                                       "Created"), **_errors(400, 413, 422)}}},
        "/api/sessions/revoke": {"post": {
            "summary": "End every dashboard session (the API token stays valid)",
            "operationId": "revokeSessions",
            "responses": {"200": _json({"type": "object", "required": ["revoked"],
                                        "properties": {"revoked": {"type": "integer"}}},
                                       "Revoked"), **_errors()}}},
        "/api/events/tickets": {"post": {
            "summary": "A single-use ticket for GET /api/events?ticket= (EventSource cannot "
                       "send headers)", "operationId": "eventTicket",
            "responses": {"201": _json({"type": "object", "required": ["ticket", "expires_in"],
                                        "properties": {"ticket": {"type": "string"},
                                                       "expires_in": {"type": "number"}}},
                                       "Created"), **_errors()}}},
        "/metrics": {"get": {
            "summary": "Prometheus metrics", "operationId": "metrics",
            "responses": {"200": {"description": "Prometheus text format",
                                  "content": {"text/plain": {"schema": {"type": "string"}}}},
                          **_errors()}}},
        "/api/openapi.json": {"get": {
            "summary": "This document", "operationId": "openapi",
            "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1"), **_errors()}}},
    },
}
