"""A load program of the user's own for the tests: ``python command_load.py MODE [N]``.

``records``: N GET requests to CONTEND_BASE_URL, each written as a request record (docs/records.md)
to CONTEND_REQUEST_RECORDS; ``quiet``: N requests, no records; ``fail``: prints and exits with 3.
"""

import json
import os
import sys
import time
import urllib.request

mode = sys.argv[1]
count = int(sys.argv[2]) if len(sys.argv) > 2 else 5
if mode == "fail":
    print("connecting to", os.environ["CONTEND_BASE_URL"], "with", os.environ.get("CONTEND_TOKEN"))
    print("giving up: the last words of the load", file=sys.stderr)
    sys.exit(3)
with open(os.environ["CONTEND_REQUEST_RECORDS"] if mode == "records" else os.devnull, "a") as out:
    for _ in range(count):
        t0 = time.time()
        with urllib.request.urlopen(os.environ["CONTEND_BASE_URL"] + "/ping", timeout=10) as response:
            status = response.status
        out.write(json.dumps({"t0": t0, "t1": time.time(), "kind": "request", "status": status,
                              "error": None, "name": "ping", "method": "GET"}) + "\n")
        out.flush()
print("done", count)
