"""Run the Pulumi program offline: `pulumi.runtime.set_mocks` stands in for the engine and the
provider (no CLI, no cloud), and every resource the program declares is recorded with its
inputs resolved. The offline tests (tests/test_infra.py) and `python -m infra.mocks LEVEL` (a
readable plan of a level) use it."""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import dataclass
from typing import Any

import pulumi
from pulumi.runtime import MockCallArgs, MockResourceArgs, Mocks

from infra.spec import LEVELS, SECRETS, Level

PROJECT_NUMBER = "123456789012"


@dataclass(frozen=True)
class Declared:
    type: str  # e.g. "gcp:cloudrunv2/service:Service"
    name: str  # the Pulumi resource name
    inputs: dict[str, Any]


class Recorder(Mocks):
    """Answers like the provider would for the outputs the program reads, and records."""

    def __init__(self, project: str) -> None:
        self.project = project
        self.declared: list[Declared] = []

    def new_resource(self, args: MockResourceArgs) -> tuple[str, dict[str, Any]]:
        inputs = dict(args.inputs)
        self.declared.append(Declared(args.typ, args.name, inputs))
        outputs = {"name": args.name, **inputs}
        if args.typ == "gcp:serviceaccount/account:Account":
            email = f"{inputs['accountId']}@{self.project}.iam.gserviceaccount.com"
            outputs |= {"email": email, "id": f"projects/{self.project}/serviceAccounts/{email}"}
        elif args.typ == "gcp:sql/databaseInstance:DatabaseInstance":
            outputs["connectionName"] = f"{self.project}:us-central1:{args.name}"
        elif args.typ == "gcp:cloudrunv2/service:Service":
            outputs["uri"] = f"https://{inputs['name']}-{PROJECT_NUMBER}.us-central1.run.app"
        elif args.typ == "gcp:projects/serviceIdentity:ServiceIdentity":
            agent = inputs["service"].split(".")[0]
            outputs["email"] = f"service-{PROJECT_NUMBER}@gcp-sa-{agent}.iam.gserviceaccount.com"
        elif args.typ == "gcp:secretmanager/secret:Secret":
            outputs["id"] = f"projects/{self.project}/secrets/{inputs['secretId']}"
        return f"{args.name}-id", outputs

    def call(self, args: MockCallArgs) -> tuple[dict[str, Any], list[tuple[str, str]] | None]:
        if args.token == "gcp:organizations/getProject:getProject":
            return {"number": PROJECT_NUMBER, "projectId": self.project}, []
        if args.token == "gcp:storage/getProjectServiceAccount:getProjectServiceAccount":
            agent = f"service-{PROJECT_NUMBER}@gs-project-accounts.iam.gserviceaccount.com"
            return {"emailAddress": agent, "member": f"serviceAccount:{agent}"}, []
        raise NotImplementedError(f"the offline run has no answer for {args.token}")


_loops: list[asyncio.AbstractEventLoop] = []


def _loop() -> asyncio.AbstractEventLoop:
    """One loop for every offline run of this process (made anew if someone closed it)."""
    if not _loops or _loops[-1].is_closed():
        _loops.append(asyncio.new_event_loop())
    return _loops[-1]


@dataclass
class Offline:
    declared: list[Declared]  # every resource, inputs resolved
    built: Any  # stack.Built: the program's own handles


def declare(level: Level, project: str = "appraiser-test", stage: str = "full") -> Offline:
    """What `stack.build` declares for `level` at `stage`, run against the mocks."""
    from infra import stack

    # Pulumi's outputs are futures on the thread's event loop; a test that ran asyncio.run()
    # before leaves the main thread without one, so give the program a loop of its own
    asyncio.set_event_loop(_loop())
    recorder = Recorder(project)
    pulumi.runtime.set_mocks(recorder, project="appraiser", stack=level.name, preview=False)
    config = stack.Config(
        project=project,
        image=f"us-docker.pkg.dev/{project}/appraiser/appraiser@sha256:{'0' * 64}",
        mlflow_image=f"us-docker.pkg.dev/{project}/appraiser/appraiser-mlflow@sha256:{'1' * 64}",
        secret_versions={name: 3 for name in SECRETS},
        alert_email="operators@example.com",
        stage=stage,  # type: ignore[arg-type]  # build() refuses an unknown stage
        staff_group="group:staff@example.com",
    )
    built: list[Any] = []

    @pulumi.runtime.test  # waits until every output has resolved
    def program() -> None:
        built.append(stack.build(level, config))

    program()
    return Offline(recorder.declared, built[0] if built else None)


if __name__ == "__main__":
    for found in declare(LEVELS[sys.argv[1] if len(sys.argv) > 1 else "shop"]).declared:
        print(found.type, found.name, json.dumps(found.inputs, default=str)[:200])
