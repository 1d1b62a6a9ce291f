"""What starts the jobs: Cloud Scheduler (the pipeline's pass, the nightly export) and an upload to
the inbox bucket (Eventarc, through a workflow that ignores the pass's own moves)."""

from __future__ import annotations

import pulumi
import pulumi_gcp as gcp

from infra.context import Context

# The workflow an upload starts: files the pass itself moved (processed/, failed/, reasons) are
# ignored; anything else starts a pipeline execution (a pass already running makes it exit busy).
_WORKFLOW = """\
main:
  params: [event]
  steps:
    - skip_own_moves:
        switch:
          - condition: ${text.match_regex(event.data.name, "^(processed|failed)/")}
            return: "ignored: moved by a pass"
    - run_pass:
        call: http.post
        args:
          url: JOB_URI
          auth:
            type: OAuth2
        result: execution
    - done:
        return: ${execution.body.name}
"""


def declare(ctx: Context, inbox: gcp.storage.Bucket, publishes: pulumi.Resource) -> None:
    """The schedules and the upload trigger; Eventarc's waits for `publishes` (Cloud Storage's
    agent allowed to publish), without which it refuses a Cloud Storage trigger."""
    project, region, built, level = ctx.project, ctx.region, ctx.built, ctx.level

    def run_uri(name: str) -> str:
        return (
            f"https://run.googleapis.com/v2/projects/{project}/locations/{region}/jobs/{name}:run"
        )

    for name, schedule in (
        ("appraiser-pipeline", level.pipeline_schedule),
        ("appraiser-export", level.export_schedule),
    ):
        gcp.cloudscheduler.Job(
            f"schedule-{name}",
            region=region,
            schedule=schedule,
            time_zone="Etc/UTC",
            http_target=gcp.cloudscheduler.JobHttpTargetArgs(
                uri=run_uri(name),
                http_method="POST",
                oauth_token=gcp.cloudscheduler.JobHttpTargetOauthTokenArgs(
                    service_account_email=built.accounts["sa-scheduler"].email
                ),
            ),
            opts=ctx.after_apis,
        )
    workflow = gcp.workflows.Workflow(
        "inbox-upload",
        region=region,
        service_account=built.accounts["sa-events"].id,
        source_contents=_WORKFLOW.replace("JOB_URI", run_uri("appraiser-pipeline")),
        opts=ctx.after_apis,
    )
    gcp.eventarc.Trigger(
        "inbox-upload",
        location=region,
        matching_criterias=[
            gcp.eventarc.TriggerMatchingCriteriaArgs(
                attribute="type", value="google.cloud.storage.object.v1.finalized"
            ),
            gcp.eventarc.TriggerMatchingCriteriaArgs(attribute="bucket", value=inbox.name),
        ],
        destination=gcp.eventarc.TriggerDestinationArgs(workflow=workflow.id),
        service_account=built.accounts["sa-events"].email,
        # Eventarc refuses a Cloud Storage trigger until the storage agent may publish
        opts=pulumi.ResourceOptions(depends_on=[*ctx.apis, publishes]),
    )
    built.extra["workflow"] = workflow
