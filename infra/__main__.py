"""The Pulumi program: `pulumi up --stack shop` (or partners, platform) from this folder.
The stack's name picks the load level (infra/spec.py); Pulumi.<stack>.yaml holds the project,
the image digest, the pinned secret versions and the alert address."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `infra` as a package

import pulumi

from infra.spec import LEVELS
from infra.stack import Config, build

# `shop`, or `shop-east` for the same level elsewhere (section 15): the part before the hyphen
build(LEVELS[pulumi.get_stack().split("-", 1)[0]], Config.from_pulumi())
