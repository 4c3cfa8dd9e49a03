from __future__ import annotations

import json
import logging

from serving.logs import JsonFormatter, _RequestIdFilter, request_id_var


def test_json_lines_stay_valid_with_quotes_and_carry_the_request_id() -> None:
    record = logging.LogRecord("serving.x", logging.INFO, __file__, 1, 'say "hi" %s', ("\\n",), None)
    token = request_id_var.set("req-42")
    try:
        _RequestIdFilter().filter(record)
    finally:
        request_id_var.reset(token)
    doc = json.loads(JsonFormatter().format(record))
    assert doc["message"] == 'say "hi" \\n'
    assert doc["request_id"] == "req-42" and doc["level"] == "INFO" and doc["logger"] == "serving.x"
