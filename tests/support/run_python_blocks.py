"""Runs the python blocks of one document, in one namespace, as test_code_blocks sends them.

`python run_python_blocks.py FD`: reads one JSON request a line on stdin ({"filename", "line",
"source"}), runs the source as a script's next lines would run (its tracebacks name the
document and its line), and answers on the file descriptor FD with one JSON line
({"ok": true} or {"ok": false, "error": traceback}). What blocks print goes to stdout.
"""

from __future__ import annotations

import json
import os
import sys
import traceback


def main() -> None:
    replies = os.fdopen(int(sys.argv[1]), "w")
    sys.path.insert(0, os.getcwd())  # as `python` started in the user's project folder
    namespace: dict[str, object] = {"__name__": "__main__"}
    for request_line in sys.stdin:
        request = json.loads(request_line)
        source = "\n" * (request["line"] - 1) + request["source"]
        print(f">>> {request['filename']}:{request['line']}", flush=True)
        try:
            exec(compile(source, request["filename"], "exec"), namespace)
            reply: dict[str, object] = {"ok": True}
        except BaseException:
            reply = {"ok": False, "error": traceback.format_exc()}
        sys.stdout.flush()
        replies.write(json.dumps(reply) + "\n")
        replies.flush()


if __name__ == "__main__":
    main()
