"""Alert policies, mailed to the operators: on what the app exports (`GET /metrics`, in PromQL)
and on Cloud Run's and Cloud SQL's own metrics (a failed pipeline execution, the database's
connection budget)."""

from __future__ import annotations

from typing import Any

import pulumi_gcp as gcp

from infra.context import Context

# the app's metrics reach Managed Service for Prometheus through the sidecar beside each instance
PROMQL_ALERTS = {
    "appraisals not reaching the store": (
        "sum(rate(appraiser_store_write_failures_total[5m])) > 0",
        "300s",
    ),
    "appraisals dropped": ("sum(increase(appraiser_appraisals_dropped_total[10m])) > 0", "0s"),
    "instances disagree on the champion": (
        "max(appraiser_champion_version) - min(appraiser_champion_version) > 0",
        "300s",
    ),
    # the champion's version, not the load counter: every new instance's first load counts too
    "promotion happened": ("changes(max(appraiser_champion_version)[10m:1m]) > 0", "0s"),
    "newest batch drifts": ("max(appraiser_batch_drifted_features) > 0", "0s"),
}
BUILT_IN_ALERTS = {
    "pipeline execution failed": (
        'metric.type = "run.googleapis.com/job/completed_execution_count"'
        ' AND resource.type = "cloud_run_job" AND metric.labels.result = "failed"',
        0.0,
    ),
}


def declare(ctx: Context) -> None:
    """An e-mail channel for the operators and one policy per alert, each naming its query."""
    channel = gcp.monitoring.NotificationChannel(
        "operators", type="email", labels={"email_address": ctx.config.alert_email}
    )

    def policy(title: str, **condition: Any) -> None:
        gcp.monitoring.AlertPolicy(
            title.replace(" ", "-").replace("%", "pct"),
            display_name=title,
            combiner="OR",
            notification_channels=[channel.id],
            conditions=[gcp.monitoring.AlertPolicyConditionArgs(display_name=title, **condition)],
        )

    for title, (query, duration) in PROMQL_ALERTS.items():
        policy(
            title,
            condition_prometheus_query_language=gcp.monitoring.AlertPolicyConditionConditionPrometheusQueryLanguageArgs(
                query=query, duration=duration
            ),
        )
    budget = int(ctx.level.database.max_connections * 0.8)
    thresholds = {
        **BUILT_IN_ALERTS,
        "database connections over 80%": (
            'metric.type = "cloudsql.googleapis.com/database/postgresql/num_backends"'
            ' AND resource.type = "cloudsql_database"',
            float(budget),
        ),
    }
    for title, (metric_filter, threshold) in thresholds.items():
        policy(
            title,
            condition_threshold=gcp.monitoring.AlertPolicyConditionConditionThresholdArgs(
                filter=metric_filter,
                comparison="COMPARISON_GT",
                threshold_value=threshold,
                duration="300s",
                aggregations=[
                    # summed over the series (num_backends is per database; the budget is the
                    # instance's)
                    gcp.monitoring.AlertPolicyConditionConditionThresholdAggregationArgs(
                        alignment_period="300s",
                        per_series_aligner="ALIGN_MAX",
                        cross_series_reducer="REDUCE_SUM",
                    )
                ],
            ),
        )
