"""Subledger from Python with the standard library only: entitlement checks, the change feed,
and verifying Subledger's outbound notifications (Subledger-Signature, Stripe's scheme).

    python3 subledger_check.py http://localhost:8080 cus_123 sso     # prints yes/no, exit 0/1
    python3 subledger_check.py http://localhost:8080 --changes        # prints the feed's changes

SUBLEDGER_TOKEN, when set, is sent as the bearer token. Tested in CI
(crates/server/tests/examples.rs).
"""

import hashlib
import hmac
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request


def _get(base_url, path, token=None):
    request = urllib.request.Request(base_url.rstrip("/") + path)
    if token:
        request.add_header("Authorization", "Bearer " + token)
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def feature(base_url, customer, name, token=None):
    """One feature of one customer: {"enabled": bool, "limit": int or None}."""
    path = "/v1/customers/%s/entitlements/%s" % (
        urllib.parse.quote(customer, safe=""),
        urllib.parse.quote(name, safe=""),
    )
    answer = _get(base_url, path, token)
    return {"enabled": answer["enabled"], "limit": answer["limit"]}


def changes(base_url, after=None, token=None):
    """Every change after the cursor `after` (all of them when None), page by page."""
    while True:
        query = {"limit": "1000"}
        if after:
            query["after"] = after
        page = _get(base_url, "/v1/changes?" + urllib.parse.urlencode(query), token)
        for change in page["changes"]:
            yield change
        after = page["next_cursor"]
        if not page["has_more"]:
            return


def verify_notification(secrets, header, body, tolerance=300, now=None):
    """The notification in `body` (bytes) if `header` (Subledger-Signature) proves that
    Subledger sent it with one of `secrets` within `tolerance` seconds; else ValueError."""
    if not header:
        raise ValueError("no Subledger-Signature header")
    timestamp, signatures = None, []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t":
            timestamp = int(value)
        elif key == "v1":
            signatures.append(value)
    if timestamp is None or not signatures:
        raise ValueError("malformed Subledger-Signature header")
    now = int(time.time()) if now is None else now
    if abs(now - timestamp) > tolerance:
        raise ValueError("signature timestamp outside the tolerance")
    signed = str(timestamp).encode() + b"." + body
    for secret in secrets:
        expected = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
        if any(hmac.compare_digest(expected, given) for given in signatures):
            event = json.loads(body)
            if event.get("type") != "entitlements.updated":
                raise ValueError("not an entitlements.updated event")
            return event
    raise ValueError("no signature matches")


def main(argv):
    token = os.environ.get("SUBLEDGER_TOKEN")
    if len(argv) == 3 and argv[2] == "--changes":
        for change in changes(argv[1], token=token):
            print(change["cursor"], change["customer"], ",".join(change["entitlements"]["plans"]))
        return 0
    if len(argv) != 4:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    try:
        answer = feature(argv[1], argv[2], argv[3], token)
    except urllib.error.HTTPError as error:
        print("subledger answered %s: %s" % (error.code, error.read().decode()), file=sys.stderr)
        return 2
    except urllib.error.URLError as error:
        print("subledger cannot be reached: %s" % error.reason, file=sys.stderr)
        return 2
    limit = "" if answer["limit"] is None else " (limit %s)" % answer["limit"]
    print(("yes" if answer["enabled"] else "no") + limit)
    return 0 if answer["enabled"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
