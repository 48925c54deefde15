#!/usr/bin/env python3
"""Writes deploy/grafana/subledger.json, the Grafana dashboard of Subledger's metrics.

The panels are listed here once, as data, so the JSON (which Grafana wants verbose) is never
edited by hand: change a panel here and run `python3 tools/grafana_dashboard.py`. A test
(crates/server/tests/metrics.rs) checks that every metric a panel queries is one Subledger
exports.
"""
import json
import pathlib

DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}

# (title, unit, [(promql, legend)], kind)
PANELS = [
    ("Webhooks received", "reqps", [
        ('sum by (outcome) (rate(subledger_webhooks_received_total[5m]))', "{{outcome}}"),
        ('sum by (reason) (rate(subledger_webhooks_received_total{outcome="rejected"}[5m]))', "rejected: {{reason}}"),
    ], "timeseries"),
    ("Inbox: pending and failing", "short", [
        ("max(subledger_inbox_pending)", "pending"),
        ("max(subledger_inbox_failing)", "failing"),
        ("max(subledger_events_quarantined)", "quarantined"),
    ], "timeseries"),
    ("Oldest pending event", "s", [
        ("max(subledger_inbox_oldest_pending_age_seconds)", "age"),
    ], "timeseries"),
    ("Rows applied by the worker", "ops", [
        ("sum by (outcome) (rate(subledger_inbox_rows_total[5m]))", "{{outcome}}"),
    ], "timeseries"),
    ("Acknowledged to visible in entitlements (p50, p99)", "s", [
        ("histogram_quantile(0.5, sum by (le) (rate(subledger_ack_to_projection_seconds_bucket[5m])))", "p50"),
        ("histogram_quantile(0.99, sum by (le) (rate(subledger_ack_to_projection_seconds_bucket[5m])))", "p99"),
    ], "timeseries"),
    ("Projection lag", "short", [
        ("max(subledger_projection_lag_events)", "events behind the log"),
    ], "timeseries"),
    ("Customers by dunning state", "short", [
        ("sum by (dunning_state) (subledger_customers)", "{{dunning_state}}"),
    ], "timeseries"),
    ("Payments failed", "short", [
        ("sum by (kind) (increase(subledger_payments_failed_total[1h]))", "{{kind}} per hour"),
    ], "timeseries"),
    ("Disputes", "short", [
        ("max(subledger_disputes_open)", "open"),
        ("sum(increase(subledger_disputes_opened_total[1d]))", "opened per day"),
    ], "timeseries"),
    ("Calls to Stripe", "reqps", [
        ("sum by (client, outcome, class) (rate(subledger_stripe_requests_total[5m]))", "{{client}} {{outcome}} {{class}}"),
    ], "timeseries"),
    ("HTTP latency p99 by route", "s", [
        ("histogram_quantile(0.99, sum by (le, route) (rate(subledger_http_request_duration_seconds_bucket[5m])))", "{{route}}"),
    ], "timeseries"),
    ("HTTP requests by status", "reqps", [
        ("sum by (status) (rate(subledger_http_requests_total[5m]))", "{{status}}"),
    ], "timeseries"),
    ("Process memory", "bytes", [
        ("max(process_resident_memory_bytes)", "resident"),
    ], "timeseries"),
    ("Process CPU", "percentunit", [
        ("sum(rate(process_cpu_seconds_total[5m]))", "cpu"),
    ], "timeseries"),
]


def panel(index, title, unit, queries, kind):
    width, height = 12, 8
    return {
        "id": index + 1,
        "type": kind,
        "title": title,
        "datasource": DATASOURCE,
        "gridPos": {"h": height, "w": width, "x": (index % 2) * width, "y": (index // 2) * height},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
        "targets": [
            {"refId": chr(ord("A") + n), "datasource": DATASOURCE, "expr": expr, "legendFormat": legend}
            for n, (expr, legend) in enumerate(queries)
        ],
    }


def dashboard():
    return {
        "__inputs": [{
            "name": "DS_PROMETHEUS", "label": "Prometheus", "type": "datasource",
            "pluginId": "prometheus", "pluginName": "Prometheus",
        }],
        "title": "Subledger",
        "uid": "subledger",
        "description": "Webhooks, the inbox, projection, dunning, payments and Stripe calls of Subledger.",
        "tags": ["subledger", "stripe", "billing"],
        "timezone": "utc",
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "panels": [panel(i, *p) for i, p in enumerate(PANELS)],
    }


if __name__ == "__main__":
    out = pathlib.Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "subledger.json"
    out.write_text(json.dumps(dashboard(), indent=2) + "\n")
    print(f"wrote {out}")
