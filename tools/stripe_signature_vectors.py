#!/usr/bin/env python3
"""Webhook signature vectors made and judged by Stripe's official Python library.

Each vector is a body, a Stripe-Signature header, a secret, a moment and a tolerance, and
whether stripe-python's WebhookSignature.verify_header accepts it. The Rust test
crates/stripe-adapter/tests/stripe_python_vectors.rs checks that Subledger's verifier gives
the same answer for every one.

Regenerate (the output is committed as data; CI does not run this):

    python3 -m venv /tmp/stripe-venv && /tmp/stripe-venv/bin/pip install 'stripe==16.1.0'
    /tmp/stripe-venv/bin/python tools/stripe_signature_vectors.py \
        > crates/stripe-adapter/tests/data/stripe_python_signature_vectors.json

stripe-python checks the tolerance on the past side only; Subledger also refuses timestamps
too far in the future (a clock-skewed or replayed-ahead header). The vectors keep to
timestamps at or before `now`, where both rules agree; the Rust tests cover the future side.
"""

import json
import random
import time

import stripe
from stripe import WebhookSignature

NOW = 1_767_225_600
TOLERANCE = 300
SECRET = "whsec_vectors_current"
OLD_SECRET = "whsec_vectors_previous"


def judged(name, payload, header, secret, tolerance=TOLERANCE):
    real_time = time.time
    time.time = lambda: NOW
    try:
        WebhookSignature.verify_header(payload, header, secret, tolerance)
        accepts = True
    except stripe.SignatureVerificationError:
        accepts = False
    finally:
        time.time = real_time
    return {
        "name": name,
        "payload": payload,
        "header": header,
        "secret": secret,
        "now": NOW,
        "tolerance_secs": tolerance,
        "stripe_python_accepts": accepts,
    }


def sign(payload, secret, timestamp):
    return WebhookSignature.generate_signature_header(payload, secret, timestamp)


def main():
    rng = random.Random(20261130)
    vectors = []
    bodies = [
        "{}",
        '{"id":"evt_1","object":"event","type":"invoice.paid"}',
        '{"id":"evt_2","object":"event","data":{"object":{"description":"café – ünïcode ✓"}}}',
        json.dumps({"id": "evt_3", "object": "event", "pad": "x" * 4000}),
    ]
    for _ in range(8):
        length = rng.randint(1, 600)
        bodies.append("".join(rng.choice('{}[]",:abcxyz0123456789 \\n') for _ in range(length)))
    for n, body in enumerate(bodies):
        header = sign(body, SECRET, NOW - rng.randint(0, TOLERANCE))
        vectors.append(judged(f"body {n}: signed now", body, header, SECRET))
        vectors.append(judged(f"body {n}: another secret", body, header, OLD_SECRET))
        tampered = body[:-1] + ("y" if body[-1:] != "y" else "z")
        vectors.append(judged(f"body {n}: body changed", tampered, header, SECRET))
        stale = sign(body, SECRET, NOW - TOLERANCE - rng.randint(1, 10_000))
        vectors.append(judged(f"body {n}: signed too long ago", body, stale, SECRET))
        edge = sign(body, SECRET, NOW - TOLERANCE)
        vectors.append(judged(f"body {n}: signed at the tolerance's edge", body, edge, SECRET))

    body = bodies[1]
    good = sign(body, SECRET, NOW - 5)
    timestamp, signature = good.split(",")
    old = sign(body, OLD_SECRET, NOW - 5).split(",")[1]
    vectors += [
        judged("rotation: old and new signatures, new secret", body, f"{timestamp},{old},{signature}", SECRET),
        judged("rotation: old and new signatures, old secret", body, f"{timestamp},{old},{signature}", OLD_SECRET),
        judged("a v0 signature only", body, f"{timestamp},v0={signature[3:]}", SECRET),
        judged("v0 and v1", body, f"{timestamp},v0=deadbeef,{signature}", SECRET),
        judged("signature first, timestamp last", body, f"{signature},{timestamp}", SECRET),
        judged("no timestamp", body, signature, SECRET),
        judged("no signature", body, timestamp, SECRET),
        judged("upper-case hex", body, f"{timestamp},v1={signature[3:].upper()}", SECRET),
        judged("truncated signature", body, f"{timestamp},v1={signature[3:-2]}", SECRET),
        judged("signature of another second", body, f"t={NOW - 6},{signature}", SECRET),
        judged("empty header", body, "", SECRET),
        judged("garbage header", body, "not a signature header", SECRET),
        judged("non-numeric timestamp", body, f"t=soon,{signature}", SECRET),
    ]
    json.dump(
        {
            "generator": f"tools/stripe_signature_vectors.py with stripe-python {stripe.VERSION}",
            "vectors": vectors,
        },
        fp=__import__("sys").stdout,
        indent=1,
        ensure_ascii=False,
    )
    print()


if __name__ == "__main__":
    main()
