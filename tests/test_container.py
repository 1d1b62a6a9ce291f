"""The container files, checked without a Docker engine (none runs on these machines).

Dockerfile, compose.yaml, .dockerignore and requirements-runtime.txt must parse, and every command,
option, path, requirement and setting they use must exist in the project: `appraiser` commands are
resolved and parsed by the real Typer app, the pinned requirements are compared with
requirements.txt (the tested path), and the builder stage's `pip install .` is replayed on exactly
the files the Dockerfile copies.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import re
import shlex
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import typer
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from typer.testing import CliRunner

from appraiser.cli import app

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"
COMPOSE = REPO / "compose.yaml"
DOCKERIGNORE = REPO / ".dockerignore"
LOCK = REPO / "requirements.txt"  # what `make install` (the tested path) installs
BOOTSTRAP = "requirements-bootstrap.txt"  # the installer, installed first by both paths
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())

# host paths a bind mount may name although they are not in the repository: Docker creates them
CREATED_ON_DEMAND = {"inbox": "the pipeline's inbox, user data, created by `docker compose run`"}
# the settings the app reads that the API container must be given
API_ENV = {"APPRAISER_DATABASE_URL", "MLFLOW_TRACKING_URI", "APPRAISER_HOME", "APPRAISER_API_KEY"}
INSTRUCTIONS = {
    "ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK", "LABEL",
    "MAINTAINER", "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR",
}  # fmt: skip
BUILD_TOOLS = ("build-essential", "gcc", "g++", "clang", "cmake", "make", "git", "curl", "wget")
INDEX_OPTIONS = ("--index-url", "--extra-index-url", "--find-links", "--trusted-host", "-i ", "-f ")
LOOPBACK = {"127.0.0.1", "localhost", "::1", "0.0.0.0"}

runner = CliRunner()


# --- Dockerfile -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    line: int  # where it starts
    keyword: str  # upper case
    args: str  # the rest, continuation lines joined


@dataclass
class Stage:
    image: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def run_text(self) -> str:
        return "\n".join(i.args for i in self.all("RUN"))


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with `\\` continuations joined; comment lines (also inside one) dropped."""
    instructions: list[Instruction] = []
    parts: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not parts:
            start = number
        if line.endswith("\\"):
            parts.append(line[:-1].strip())
            continue
        parts.append(line)
        keyword, _, args = " ".join(parts).partition(" ")
        parts = []
        if "<<" in args and keyword.upper() in {"RUN", "COPY"}:
            raise ValueError(f"line {start}: heredocs are not handled by this parser")
        instructions.append(Instruction(start, keyword.upper(), args.strip()))
    if parts:
        raise ValueError(f"line {start}: the file ends inside a continued instruction")
    return instructions


def stages(instructions: list[Instruction]) -> list[Stage]:
    """The stages, each with what it inherits: a stage built FROM an earlier one starts with that
    stage's instructions and base image, as Docker builds it."""
    result: list[Stage] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            words = [w for w in ins.args.split() if not w.startswith("--")]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            assert len(words) in (1, 3), f"line {ins.line}: FROM {ins.args!r}"
            parent = next((s for s in result if s.name == words[0]), None)
            if parent:
                result.append(Stage(parent.image, name, list(parent.instructions)))
            else:
                result.append(Stage(words[0], name))
        else:
            assert result or ins.keyword == "ARG", f"line {ins.line}: {ins.keyword} before FROM"
            if result:
                result[-1].instructions.append(ins)
    return result


def exec_form(args: str) -> list[str]:
    """A JSON-array (exec form) command; shell form fails (the shell, not the app, gets signals)."""
    assert args.startswith("["), f"not in exec form: {args}"
    argv = json.loads(args)
    assert isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv), args
    return argv


def healthcheck_argv(args: str) -> list[str]:
    """The command of `HEALTHCHECK [--option=value ...] CMD [...]`."""
    words = args.split(None, 1)
    while words and words[0].startswith("--"):
        words = words[1].split(None, 1)
    assert words and words[0].upper() == "CMD", f"HEALTHCHECK {args}"
    return exec_form(words[1])


def env_of(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for ins in stage.all("ENV"):
        tokens = shlex.split(ins.args)
        if "=" not in tokens[0]:  # legacy `ENV KEY value`
            env[tokens[0]] = " ".join(tokens[1:])
            continue
        for token in tokens:
            key, sep, value = token.partition("=")
            assert sep, f"line {ins.line}: {token!r} is not KEY=VALUE"
            env[key] = value
    return env


def copies(stage: Stage) -> list[tuple[dict[str, str], list[str], str]]:
    """Each COPY of a stage as (flags, sources, destination)."""
    result = []
    for ins in stage.all("COPY"):
        tokens = shlex.split(ins.args)
        flags = dict(t[2:].partition("=")[::2] for t in tokens if t.startswith("--"))
        paths = [t for t in tokens if not t.startswith("--")]
        assert len(paths) >= 2, f"line {ins.line}: COPY needs a source and a destination"
        result.append((flags, paths[:-1], paths[-1]))
    return result


@pytest.fixture(scope="module")
def dockerfile() -> list[Stage]:
    return stages(parse_dockerfile(DOCKERFILE.read_text()))


@pytest.fixture(scope="module")
def final(dockerfile: list[Stage]) -> Stage:
    return dockerfile[-1]


def test_dockerfile_parses_into_known_instructions():
    instructions = parse_dockerfile(DOCKERFILE.read_text())
    assert instructions and instructions[0].keyword in {"FROM", "ARG"}
    unknown = [f"line {i.line}: {i.keyword}" for i in instructions if i.keyword not in INSTRUCTIONS]
    assert not unknown
    for ins in instructions:
        if ins.keyword in {"CMD", "ENTRYPOINT"}:
            exec_form(ins.args)
        if ins.keyword == "HEALTHCHECK":
            healthcheck_argv(ins.args)


def test_the_parser_joins_continuations_and_catches_a_dangling_one():
    parsed = parse_dockerfile("FROM x AS b\n# c\nRUN a \\\n    # inner comment\n    && b\n")
    assert [(i.line, i.keyword, i.args) for i in parsed] == [
        (1, "FROM", "x AS b"),
        (3, "RUN", "a && b"),
    ]
    with pytest.raises(ValueError):
        parse_dockerfile("FROM x\nRUN a \\\n")


def test_multi_stage_on_the_python_of_the_lock(dockerfile):
    assert len(dockerfile) >= 2, "one stage builds, another runs"
    python = re.search(r"--python-version (\d+\.\d+)", LOCK.read_text())
    assert python, "requirements.txt names the Python it was compiled for"
    for stage in dockerfile:
        assert stage.image == f"python:{python.group(1)}-slim", stage.image
    names = [s.name for s in dockerfile]
    for stage in dockerfile:
        for flags, _, _ in copies(stage):
            if "from" in flags:
                assert flags["from"] in names[: dockerfile.index(stage)], flags


def test_final_stage_runs_as_a_non_root_user_it_creates(final):
    users = final.all("USER")
    assert users, "the final stage sets USER"
    user = users[-1].args.split(":")[0]
    assert user not in {"root", "0"}
    useradds = [c.split() for c in re.split(r"&&|;|\n", final.run_text()) if "useradd " in c]
    created = [c for c in useradds if c[-1] == user]
    assert created, f"user {user} is created in the final stage"
    assert option(created[0], "--uid") == "10001"
    cmd_index = final.instructions.index(final.all("CMD")[-1])
    assert final.instructions.index(users[-1]) < cmd_index


def test_final_stage_is_slim_and_has_what_lightgbm_needs(final):
    run = final.run_text()
    installs = re.findall(r"apt-get install ([^&;|]*)", run)
    packages = {w for line in installs for w in line.split() if not w.startswith("-")}
    assert "libgomp1" in packages, "LightGBM loads the OpenMP runtime"
    assert not packages & set(BUILD_TOOLS), packages & set(BUILD_TOOLS)
    assert all("--no-install-recommends" in line for line in installs)
    if installs:
        assert "rm -rf /var/lib/apt/lists" in run
    assert not re.search(r"\bpip (install|wheel)\b", run), "the final stage only copies the venv"


def test_final_stage_uses_the_builders_venv_and_a_writable_home(dockerfile, final):
    by_name = {s.name: s for s in dockerfile}
    venv_copies = [
        (by_name[flags["from"]], dest.rstrip("/"))
        for flags, sources, dest in copies(final)
        if flags.get("from") in by_name
    ]
    assert venv_copies, "the final stage copies a built venv"
    built, venv = venv_copies[0]
    assert f"python -m venv {venv}" in built.run_text()
    env = env_of(final)
    assert env["PATH"].split(":")[0] == f"{venv}/bin"
    home = env["APPRAISER_HOME"]
    assert re.search(rf"chown [^&;|]*{re.escape(home)}\b", final.run_text()), "owned by the user"
    assert final.all("WORKDIR")[-1].args == "/app"


def test_healthcheck_asks_the_served_port_with_the_standard_library(final):
    checks = final.all("HEALTHCHECK")
    assert checks, "the final stage has a HEALTHCHECK"
    argv = healthcheck_argv(checks[-1].args)
    assert argv[:2] == ["python", "-c"], "slim has no curl or wget"
    compile(argv[2], "<healthcheck>", "exec")
    url = urlsplit(re.findall(r"https?://[^'\"]+", argv[2])[0])
    assert url.path == "/health"
    exposed = {p.split("/")[0] for ins in final.all("EXPOSE") for p in ins.args.split()}
    assert str(url.port) in exposed
    cmd = exec_form(final.all("CMD")[-1].args)
    assert cmd[cmd.index("--port") + 1] == str(url.port)
    assert url.hostname in LOOPBACK


# --- the build context ----------------------------------------------------------------------------


def dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    """(negated, regex) per .dockerignore line, as Docker matches them (last match wins)."""
    rules = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line.lstrip("!").strip().lstrip("/").removeprefix("./").rstrip("/")
        regex, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                regex, i = regex + pattern[i : end + 1], end + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        rules.append((negated, re.compile(regex + r"\Z")))
    return rules


def ignored(relative: str) -> bool:
    """Whether Docker leaves `relative` (or a folder holding it) out of the build context."""
    parts = relative.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    result = False
    for negated, regex in dockerignore_rules():
        if any(regex.match(c) for c in candidates):
            result = not negated
    return result


def context_files(source: str) -> list[str]:
    """The files a COPY source brings from the build context (caches aside), relative to REPO."""
    matches = sorted(REPO.glob(source)) or [REPO / source]
    files = []
    for path in matches:
        assert path.exists(), f"COPY source {source} is not in the project"
        inner = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
        files += [p.relative_to(REPO).as_posix() for p in inner]
    junk = ("__pycache__/", ".egg-info/", ".pyc")  # left out by .dockerignore, made again by pip
    return [f for f in files if not any(j in f or f.endswith(j) for j in junk)]


def test_dockerignore_matching():
    assert ignored(".venv/bin/python") and ignored(".git") and ignored(".env")
    assert ignored("src/appraiser/__pycache__/cli.cpython-311.pyc")
    assert ignored("mlruns/0/meta.yaml") and ignored(".appraiser/mlflow.db")
    assert ignored("inbox/batch.csv") and ignored("diamonds.csv")
    assert not ignored("src/appraiser/cli.py") and not ignored("README.md")


def test_every_copy_source_exists_and_is_in_the_build_context(dockerfile):
    sources = [
        s for stage in dockerfile for f, ss, _ in copies(stage) if "from" not in f for s in ss
    ]
    assert sources
    for source in sources:
        files = context_files(source)
        assert files, f"COPY {source} brings nothing"
        left_out = [f for f in files if ignored(f)]
        assert not left_out, f"COPY {source}: .dockerignore leaves out {left_out[:5]}"


PROJECT_INSTALL = re.compile(r"pip install[^&;|]* \.(\s|$)")


@pytest.fixture(scope="module")
def project_stages(dockerfile: list[Stage]) -> list[Stage]:
    """The stages that install the project (`pip install .`): each virtualenv's, last."""
    found = [s for s in dockerfile if PROJECT_INSTALL.search(s.run_text())]
    assert found, "no stage installs the project"
    return found


def test_the_build_copies_what_pip_install_dot_needs(project_stages):
    needed = {"pyproject.toml", PYPROJECT["project"]["readme"]}
    needed |= set(PYPROJECT["tool"]["setuptools"]["packages"]["find"]["where"])
    for stage in project_stages:
        copied = {Path(s).as_posix() for f, ss, _ in copies(stage) if "from" not in f for s in ss}
        assert needed <= copied, (stage.name, needed - copied)


def test_a_code_change_rebuilds_only_the_projects_layer(dockerfile, project_stages):
    """Editing the code must neither reinstall nor copy again the dependencies: the stages that
    install the project install no requirement file after it, and each image copies its
    dependencies' virtualenv (from a stage without the project) and then the project's files."""
    by_name = {s.name: s for s in dockerfile}
    for stage in project_stages:
        runs = stage.all("RUN")
        project = next(i for i, run in enumerate(runs) if PROJECT_INSTALL.search(run.args))
        assert not installed_requirement_files(Stage(stage.image, stage.name, runs[project:]))
    for name in ("runtime", "mlflow"):
        froms = [flags["from"] for flags, _, _ in copies(by_name[name]) if "from" in flags]
        assert len(froms) >= 2, (name, froms)
        venv = by_name[froms[0]]
        assert installed_requirement_files(venv) and not PROJECT_INSTALL.search(venv.run_text())
        assert froms[-1] in {s.name for s in project_stages}, (name, froms)


# --- requirements ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pin:
    version: str
    hashes: frozenset[str]
    marker: str


def pins(path: Path) -> dict[str, Pin]:
    """name -> Pin of a requirements file; every line must be `name==version ... --hash=sha256:`."""
    text = path.read_text().replace("\\\n", " ")
    result: dict[str, Pin] = {}
    for raw in text.splitlines():
        line = raw.split(" #")[0].strip()
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==(\S+)(.*)", line)
        assert match, f"{path.name}: not pinned with ==: {line[:80]}"
        name, _, version, rest = match.groups()
        hashes = frozenset(re.findall(r"--hash=sha256:([0-9a-f]{64})", rest))
        assert hashes, f"{path.name}: {name} has no --hash=sha256:"
        marker = rest.split("--hash")[0].strip().lstrip(";").strip()
        result[canonicalize_name(name)] = Pin(version, hashes, marker)
    return result


def installed_requirement_files(stage: Stage) -> list[str]:
    files = []
    for command in re.split(r"&&|;|\n", stage.run_text()):
        if re.search(r"\bpip install\b", command):
            found = re.findall(r"(?:-r|--requirement)[= ](\S+)", command)
            if found:
                assert "--require-hashes" in command, command
            files += found
    return files


def dependency_closure(roots: list[str]) -> set[str]:
    """Names needed on this platform (Linux, this Python) by `roots`, per installed metadata."""
    todo = [Requirement(r) for r in roots]
    seen: set[str] = set()
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        extras = sorted(req.extras) or [""]
        if req.marker and not req.marker.evaluate({"extra": ""}):  # e.g. uvloop, not on Windows
            continue
        key = f"{name}[{','.join(extras)}]"
        if key in seen:
            continue
        seen.add(key)
        try:
            requires = metadata.requires(req.name) or []
        except metadata.PackageNotFoundError:
            pytest.fail(f"{req.name} is not installed in this venv: run `make install`")
        for spec in map(Requirement, requires):
            if spec.marker is None or any(spec.marker.evaluate({"extra": e}) for e in extras):
                todo.append(Requirement(str(spec).split(";")[0]))
    return {k.split("[")[0] for k in seen}


@pytest.fixture(scope="module")
def builder(dockerfile: list[Stage]) -> Stage:
    return next(s for s in dockerfile if installed_requirement_files(s))


def stage_pins(stage: Stage) -> dict[str, Pin]:
    """What a stage installs from requirement files, the installer first and alone."""
    files = installed_requirement_files(stage)
    assert files[0] == BOOTSTRAP, f"the pinned installer is installed first: {files}"
    copied = {s for f, ss, _ in copies(stage) if "from" not in f for s in ss}
    result: dict[str, Pin] = {}
    for name in files[1:]:
        assert name in copied, f"{name} is installed but not copied into the stage"
        result |= pins(REPO / name)
    return result


@pytest.fixture(scope="module")
def runtime_pins(builder: Stage) -> dict[str, Pin]:
    return stage_pins(builder)


def assert_tested(stage_pins: dict[str, Pin]) -> None:
    tested = pins(LOCK)
    unknown = sorted(set(stage_pins) - set(tested))
    assert not unknown, f"not in requirements.txt: {unknown}"
    differ = [n for n, p in stage_pins.items() if tested[n] != p]
    assert not differ, f"version, hashes or marker differ from requirements.txt: {differ}"


def test_runtime_pins_are_the_tested_pins(runtime_pins):
    assert_tested(runtime_pins)


def test_the_installer_is_pinned_first_in_the_makefile_too(builder):
    makefile = (REPO / "Makefile").read_text()
    installs = re.findall(r"pip install[^\n]*?-r (\S+)", makefile)
    assert installs and installs[0] == BOOTSTRAP, installs
    uv_installs = re.findall(r"uv pip install[^\n]*", makefile)
    requirements = [line for line in uv_installs if "--no-deps" not in line]
    assert requirements and all("--require-hashes" in line for line in requirements), uv_installs
    installers = pins(REPO / BOOTSTRAP)
    assert set(installers) == {"pip", "uv"}, installers
    assert int(installers["pip"].version.split(".")[0]) >= 24, "pip 23 mishandles extras"
    assert installers["uv"] == pins(LOCK)["uv"], "make requirements pins uv once"


def test_the_mlflow_image_adds_only_the_server_to_the_tested_pins(dockerfile, runtime_pins):
    (mlflow,) = [s for s in dockerfile if s.name == "mlflow"]
    by_name = {s.name: s for s in dockerfile}
    # the virtualenv it copies first (the project's own files come after it)
    built = next(by_name[f["from"]] for f, _, _ in copies(mlflow) if f.get("from") in by_name)
    server_pins = stage_pins(built)
    assert_tested(server_pins)
    assert set(runtime_pins) < set(server_pins)
    needed = dependency_closure(PYPROJECT["project"]["optional-dependencies"]["server"])
    assert needed <= set(server_pins), sorted(needed - set(server_pins))
    argv = exec_form(mlflow.all("CMD")[-1].args)
    assert argv[:2] == ["mlflow", "server"]


def test_runtime_pins_cover_the_dependencies_and_leave_out_the_dev_extra(runtime_pins):
    needed = dependency_closure(PYPROJECT["project"]["dependencies"])
    missing = sorted(needed - set(runtime_pins))
    assert not missing, f"regenerate requirements-runtime.txt: missing {missing}"
    dev_only = dependency_closure(PYPROJECT["project"]["optional-dependencies"]["dev"]) - needed
    build = {canonicalize_name(Requirement(r).name) for r in PYPROJECT["build-system"]["requires"]}
    leaked = sorted((dev_only - build) & set(runtime_pins))
    assert not leaked, f"dev-only packages in the image: {leaked}"


def test_the_build_backend_is_pinned_when_build_isolation_is_off(project_stages, runtime_pins):
    if not all("--no-build-isolation" in s.run_text() for s in project_stages):
        pytest.skip("pip builds the project in an isolated environment")
    for spec in map(Requirement, PYPROJECT["build-system"]["requires"]):
        pin = runtime_pins.get(canonicalize_name(spec.name))
        assert pin, f"{spec.name} (build-system.requires) is not pinned"
        assert spec.specifier.contains(pin.version), (spec, pin.version)


def test_no_package_registry_is_named(builder):
    for name in installed_requirement_files(builder):
        text = (REPO / name).read_text()
        assert "://" not in text, f"{name} names a URL"
        assert not any(o in text for o in INDEX_OPTIONS), f"{name} names an index"
    text = DOCKERFILE.read_text()
    assert not any(o.strip() in text for o in INDEX_OPTIONS[:4])
    for url in re.findall(r"\w+://[^\s'\"]+", text):
        assert urlsplit(url).hostname in LOOPBACK, url


def test_pinned_requirements_parser_rejects_loose_lines(tmp_path):
    loose = tmp_path / "r.txt"
    loose.write_text("numpy>=2\n")
    with pytest.raises(AssertionError, match="not pinned"):
        pins(loose)
    loose.write_text("numpy==2.0\n")
    with pytest.raises(AssertionError, match="no --hash"):
        pins(loose)


def test_the_builders_install_ships_every_package_file(tmp_path, project_stages):
    """Replay `pip install .` on exactly the files the Dockerfile copies: every file of the
    package (migrations, templates, web assets) must land in the wheel, with the entry point."""
    context = tmp_path / "context"
    for flags, sources, _ in copies(project_stages[0]):
        for source in sources if "from" not in flags else []:
            for name in context_files(source):
                (context / name).parent.mkdir(parents=True, exist_ok=True)
                (context / name).write_bytes((REPO / name).read_bytes())
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    subprocess.run([*command, "-w", str(tmp_path / "dist"), str(context)], check=True)
    (wheel,) = (tmp_path / "dist").glob("appraiser-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        assert "appraiser = appraiser.cli:app" in archive.read(entry_points).decode()
    package = [f.removeprefix("src/") for f in context_files("src/appraiser")]
    missing = sorted(set(package) - names)
    assert not missing, f"not in the installed package (pyproject package data?): {missing}"


# --- compose --------------------------------------------------------------------------------------


def interpolate(value: str) -> str:
    """Compose's ${VAR:-default} -> default, ${VAR:?error} -> a stand-in, ${VAR} -> ''."""

    def sub(match: re.Match[str]) -> str:
        expression = match.group(1)
        if ":-" in expression:
            return expression.split(":-", 1)[1]
        if "?" in expression:
            return "set-by-the-user"
        return ""

    return re.sub(r"\$\{([^}]*)\}", sub, value)


@pytest.fixture(scope="module")
def compose() -> dict:
    document = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(document, dict) and isinstance(document.get("services"), dict)
    return document


@pytest.fixture(scope="module")
def services(compose: dict) -> dict[str, dict]:
    return compose["services"]


def command_of(service: dict) -> list[str]:
    command = service.get("command", [])
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def option(argv: list[str], name: str) -> str:
    for i, token in enumerate(argv):
        if token == name:
            return argv[i + 1]
        if token.startswith(name + "="):
            return token.split("=", 1)[1]
    raise AssertionError(f"{name} not in {argv}")


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {k: interpolate(str(v)) for k, v in env.items()}


def uses_the_image(service: dict, compose: dict) -> bool:
    return service.get("image") == compose["services"]["api"].get("image")


def test_compose_has_the_services(services, compose):
    assert {"api", "postgres", "mlflow", "pipeline"} <= set(services)
    assert services["postgres"]["image"].split(":")[0] == "postgres"
    build = services["api"]["build"]
    context = REPO / (build if isinstance(build, str) else build.get("context", "."))
    dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
    assert (context / dockerfile).resolve() == DOCKERFILE
    assert uses_the_image(services["pipeline"], compose), "a pass runs the API's image"
    mlflow = services["mlflow"]["build"]
    assert (REPO / mlflow["context"] / mlflow["dockerfile"]).resolve() == DOCKERFILE
    targets = {s.name for s in stages(parse_dockerfile(DOCKERFILE.read_text()))}
    assert mlflow["target"] == "mlflow" and "mlflow" in targets, "MLflow runs its own target"
    assert services["pipeline"].get("profiles") == ["pipeline"], "a pass runs on demand"
    assert "pipeline" not in [
        p for s in ("api", "mlflow", "postgres") for p in services[s].get("profiles", [])
    ]


def test_every_named_volume_is_declared_and_every_host_path_exists(services, compose):
    declared = set(compose.get("volumes") or {})
    on_demand = []
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0] if isinstance(volume, str) else volume["source"]
            if not source.startswith((".", "/", "~")):
                assert source in declared, f"{name}: volume {source} is not declared"
                continue
            relative = Path(source).as_posix().removeprefix("./")
            if relative in CREATED_ON_DEMAND:
                on_demand.append(relative)
                assert ignored(relative), f"{relative} (user data) stays out of the build context"
                continue
            assert (REPO / relative).exists(), f"{name}: {source} is not in the project"
    assert on_demand == ["inbox"], "the pipeline's inbox is bind-mounted"


def test_the_mlflow_database_is_created_by_the_init_script(services):
    postgres = services["postgres"]
    scripts = [v.split(":") for v in postgres["volumes"] if "/docker-entrypoint-initdb.d" in v]
    assert scripts, "an init script creates MLflow's database"
    source = REPO / scripts[0][0]
    assert source.is_file() and source.suffix == ".sql"
    assert scripts[0][1].endswith(".sql")
    created = re.findall(r"CREATE DATABASE\s+\"?(\w+)", source.read_text(), re.IGNORECASE)
    backend = urlsplit(interpolate(option(command_of(services["mlflow"]), "--backend-store-uri")))
    assert backend.path.lstrip("/") in created


def test_database_urls_match_the_postgres_service(services):
    env = environment(services["postgres"])
    store = urlsplit(environment(services["api"])["APPRAISER_DATABASE_URL"])
    backend = urlsplit(interpolate(option(command_of(services["mlflow"]), "--backend-store-uri")))
    assert store.path.lstrip("/") == env["POSTGRES_DB"]
    for url in (store, backend):
        assert url.scheme.split("+")[0] == "postgresql"
        assert (url.hostname, url.port) == ("postgres", 5432)
        assert (url.username, url.password) == (env["POSTGRES_USER"], env["POSTGRES_PASSWORD"])
    assert environment(services["pipeline"])["APPRAISER_DATABASE_URL"] == store.geturl()


def test_clients_reach_mlflow_and_mlflow_admits_them(services):
    mlflow_argv = command_of(services["mlflow"])
    assert mlflow_argv[:2] == ["mlflow", "server"]
    port = option(mlflow_argv, "--port")
    for name in ("api", "pipeline"):
        url = urlsplit(environment(services[name])["MLFLOW_TRACKING_URI"])
        assert (url.hostname, str(url.port)) == ("mlflow", port), name
        # MLflow answers 403 to a Host header outside --allowed-hosts (DNS-rebinding protection)
        allowed = option(mlflow_argv, "--allowed-hosts").split(",")
        assert url.netloc in allowed or "*" in allowed
    artifacts = option(mlflow_argv, "--artifacts-destination")
    mounts = [v.split(":")[1] for v in services["mlflow"]["volumes"]]
    assert any(artifacts == m or artifacts.startswith(m + "/") for m in mounts), "on a volume"


def test_the_api_is_given_the_settings_it_reads(services, final):
    env = env_of(final) | environment(services["api"])
    assert set(env) >= API_ENV, API_ENV - set(env)
    assert services["api"]["environment"]["APPRAISER_API_KEY"].startswith("${APPRAISER_API_KEY:?")
    published = [str(p).rsplit(":", 1)[1] for p in services["api"]["ports"]]
    argv = command_of(services["api"]) or exec_form(final.all("CMD")[-1].args)
    assert option(argv, "--port") in published


def app_settings() -> set[str]:
    """The environment variables the app's pydantic settings read."""
    from pydantic_settings import BaseSettings

    import appraiser

    names: set[str] = set()
    for info in pkgutil.walk_packages(appraiser.__path__, "appraiser."):
        if info.name.startswith("appraiser.migrations"):
            continue
        module = importlib.import_module(info.name)
        for obj in vars(module).values():
            if isinstance(obj, type) and issubclass(obj, BaseSettings) and obj is not BaseSettings:
                prefix = str(obj.model_config.get("env_prefix", ""))
                for name, info_ in obj.model_fields.items():
                    alias = info_.validation_alias
                    choices = getattr(alias, "choices", [alias])
                    names |= {c.upper() for c in choices if isinstance(c, str)}
                    if alias is None:
                        names.add((prefix + name).upper())
    return names


def test_every_setting_given_is_one_the_app_reads(services, final):
    read = app_settings()
    assert {"APPRAISER_HOME", "APPRAISER_DATABASE_URL", "MLFLOW_TRACKING_URI"} <= read
    given = set(env_of(final))
    for name in ("api", "pipeline"):
        given |= set(environment(services[name]))
    ours = {n for n in given if n.startswith("APPRAISER_") or n == "MLFLOW_TRACKING_URI"}
    assert ours <= read, f"set but never read (a typo?): {sorted(ours - read)}"
    assert read >= API_ENV, f"not read by the app: {sorted(API_ENV - read)}"


def test_healthchecks_parse_and_dependencies_wait_for_them(services, final, compose):
    image_check = bool(final.all("HEALTHCHECK"))
    for name, service in services.items():
        check = service.get("healthcheck", {})
        if check.get("disable"):
            continue
        test = check.get("test")
        if test and test[0] == "CMD" and test[1:3] == ["python", "-c"]:
            compile(test[3], f"<{name} healthcheck>", "exec")
            url = urlsplit(re.findall(r"https?://[^'\"]+", test[3])[0])
            assert str(url.port) == option(command_of(service), "--port"), name
        for target, condition in (service.get("depends_on") or {}).items():
            assert condition == {"condition": "service_healthy"}, (name, target)
            dep = services[target]
            has_check = "test" in dep.get("healthcheck", {}) or (
                uses_the_image(dep, compose) and image_check and not dep.get("healthcheck")
            )
            assert has_check, f"{name} waits for {target}, which has no healthcheck"
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])


# --- every `appraiser ...` command is a real one --------------------------------------------------


def appraiser_commands() -> list[tuple[str, list[str]]]:
    """(where, argv) for each `appraiser` command the container files run or document."""
    try:
        return _appraiser_commands()
    except Exception as exc:  # reported by the test below rather than as a collection error
        return [("the container files", ["appraiser", f"<unreadable: {exc}>"])]


def _appraiser_commands() -> list[tuple[str, list[str]]]:
    found: list[tuple[str, list[str]]] = []
    for stage in stages(parse_dockerfile(DOCKERFILE.read_text())):
        for i in stage.instructions:
            if i.keyword in {"CMD", "ENTRYPOINT"}:
                # shell form is failed by test_dockerfile_parses_into_known_instructions
                argv = json.loads(i.args) if i.args.startswith("[") else shlex.split(i.args)
                found.append((f"Dockerfile:{i.line}", argv))
            if i.keyword == "HEALTHCHECK":
                found.append((f"Dockerfile:{i.line}", healthcheck_argv(i.args)))
    for name, service in yaml.safe_load(COMPOSE.read_text())["services"].items():
        found.append((f"compose {name}", command_of(service)))
        test = service.get("healthcheck", {}).get("test") or []
        found.append((f"compose {name} healthcheck", [str(t) for t in test[1:]]))
    for path in (DOCKERFILE, COMPOSE):  # the commands the comments tell a user to type
        for number, line in enumerate(path.read_text().splitlines(), 1):
            comment = line.partition("#")[2]
            if re.search(r"\bdocker (compose )?run\b", comment):
                tokens = shlex.split(comment, comments=True)
                starts = [i for i, t in enumerate(tokens[:-1]) if t == "appraiser"]
                if starts:
                    found.append((f"{path.name}:{number}", tokens[starts[-1] :]))
    return [(where, argv) for where, argv in found if argv and argv[0] == "appraiser"]


def test_commands_are_found():
    argvs = [argv for _, argv in appraiser_commands()]
    assert ["appraiser", "pipeline", "run", "--inbox", "/data/inbox"] in argvs
    assert any(argv[1] == "serve" for argv in argvs)


@pytest.mark.parametrize(("where", "argv"), appraiser_commands(), ids=lambda v: str(v))
def test_appraiser_command_exists(where, argv):
    command: Any = typer.main.get_command(app)  # Typer vendors click: no isinstance on click's
    path: list[str] = []
    args = argv[1:]
    while hasattr(command, "commands"):  # a group: the next word names a subcommand
        assert args and not args[0].startswith("-"), f"{where}: {argv} names no command"
        sub = command.commands.get(args[0])
        assert sub is not None, f"{where}: `appraiser {' '.join([*path, args[0]])}` does not exist"
        command, path, args = sub, [*path, args[0]], args[1:]
    result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    for token in args:
        if token.startswith("--"):
            name = token.split("=")[0]
            assert re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", result.output), (
                f"{where}: `appraiser {' '.join(path)}` has no option {name}"
            )
    command.make_context(" ".join(["appraiser", *path]), list(args))  # parses: types, arity


def test_compose_publishes_ports_on_this_machine_only(services):
    """Defect: the API was published on every interface; a gateway belongs in front."""
    for name, service in services.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


# --- monitoring: Prometheus and Grafana -----------------------------------------------------------


def mounts(service: dict) -> dict[str, Path]:
    """Container path -> project path of a service's bind mounts (read-only ones required)."""
    found = {}
    for volume in service.get("volumes", []):
        source, target, *mode = volume.split(":")
        if source.startswith("."):
            assert mode == ["ro"], f"{volume}: configuration is mounted read-only"
            found[target] = REPO / source
    return found


def in_container(path: str, service: dict) -> Path:
    """The project file a container path of `service` comes from."""
    for target, source in mounts(service).items():
        if path == target or path.startswith(target + "/"):
            return source / Path(path).relative_to(target)
    raise AssertionError(f"{path} is not mounted from the project")


def test_monitoring_images_are_pinned_and_configured_from_the_repo(services):
    for name, image in (("prometheus", "prom/prometheus"), ("grafana", "grafana/grafana")):
        repository, _, tag = services[name]["image"].partition(":")
        assert repository == image and re.fullmatch(r"v?\d+\.\d+\.\d+", tag), (name, tag)
        assert all(path.exists() for path in mounts(services[name]).values()), name
    argv = services["prometheus"]["command"]
    config_file = in_container(option(argv, "--config.file"), services["prometheus"])
    config = yaml.safe_load(config_file.read_text())
    # Prometheus scrapes the API's metrics port, which is neither the API's nor published
    api_port = option(command_of(services["api"]), "--port")
    metrics_port = services["api"]["environment"]["APPRAISER_METRICS_PORT"]
    assert services["api"]["environment"]["APPRAISER_METRICS_HOST"] == "0.0.0.0"
    published = [str(p).rsplit(":", 1)[1] for p in services["api"]["ports"]]
    assert metrics_port != api_port and metrics_port not in published
    targets = [
        t for job in config["scrape_configs"] for s in job["static_configs"] for t in s["targets"]
    ]
    assert targets == [f"api:{metrics_port}"]
    assert config["scrape_configs"][0].get("metrics_path", "/metrics") == "/metrics"
    rule_files = [in_container(path, services["prometheus"]) for path in config["rule_files"]]
    assert rule_files and all(path.is_file() for path in rule_files)


def test_grafana_provisions_the_prometheus_datasource_and_the_dashboards(services):
    grafana = services["grafana"]
    provisioning = in_container("/etc/grafana/provisioning", grafana)
    sources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    (source,) = sources["datasources"]
    url = urlsplit(source["url"])
    published = {str(p).rsplit(":", 1)[1] for p in services["prometheus"]["ports"]}
    assert source["type"] == "prometheus" and url.hostname == "prometheus"
    assert str(url.port) in published
    providers = yaml.safe_load((provisioning / "dashboards" / "appraiser.yml").read_text())
    folder = in_container(providers["providers"][0]["options"]["path"], grafana)
    dashboards = sorted(folder.glob("*.json"))
    assert dashboards, "a dashboard is provisioned"
    home = environment(grafana).get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    assert home is None or in_container(home, grafana).is_file()
    for path in dashboards:
        dashboard = json.loads(path.read_text())
        titles = {panel["title"] for panel in dashboard["panels"]}
        for panel in dashboard["panels"]:
            assert panel["datasource"]["uid"] == source["uid"], (path.name, panel["title"])
            assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"])
        wanted = ("request rate", "error rate", "latency", "stones priced", "champion", "store")
        for word in wanted:
            assert any(word in t.lower() for t in titles), f"{path.name}: no {word} panel"


def prometheus_metric_names() -> set[str]:
    """The metric names the app defines (TYPE lines: also those with no sample yet), with the
    sample names a histogram or counter adds."""
    from prometheus_client import REGISTRY, generate_latest

    import appraiser.api.metrics  # noqa: F401  (defines the metrics)

    names = set()
    for line in generate_latest(REGISTRY).decode().splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names.add(name)
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
            if kind == "counter":
                names.add(f"{name}_total")
    return names


def test_alert_rules_parse_and_name_metrics_the_app_defines(services):
    config_file = in_container("/etc/prometheus/prometheus.yml", services["prometheus"])
    (rules_path,) = yaml.safe_load(config_file.read_text())["rule_files"]
    groups = yaml.safe_load(in_container(rules_path, services["prometheus"]).read_text())["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    alerts = {rule["alert"]: rule for rule in rules}
    assert len(alerts) == len(rules), "alert names are unique"
    for rule in rules:
        assert {"alert", "expr", "for", "labels", "annotations"} <= set(rule), rule
        assert re.fullmatch(r"\d+[smh]", rule["for"]) and rule["labels"]["severity"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        assert rule["expr"].count("(") == rule["expr"].count(")"), rule["alert"]
    defined = prometheus_metric_names()
    for kind, metric in (
        ("error", "appraiser_request_seconds_count"),
        ("latency", "appraiser_request_seconds_bucket"),
        ("coverage", "appraiser_batch_range_coverage_percent"),
        ("drift", "appraiser_batch_drifted_features"),
    ):
        assert any(
            kind in name.lower() and metric in rule["expr"] for name, rule in alerts.items()
        ), f"no {kind} alert on {metric}"
    dashboards = REPO / "deploy" / "grafana" / "dashboards"
    texts = [rule["expr"] for rule in rules] + [
        target["expr"]
        for path in dashboards.glob("*.json")
        for panel in json.loads(path.read_text())["panels"]
        for target in panel["targets"]
    ]
    used = {name for text in texts for name in re.findall(r"\bappraiser_[a-z0-9_]+", text)}
    assert used and used <= defined, sorted(used - defined)
