"""Stored text is shown as text: the CLI prints file names, names, notes and reasons literally
(never as Rich markup, emoji codes or terminal controls), and every CSV it writes keeps a cell
from running as a spreadsheet formula."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from appraiser import auth, data, feedback, predict, schema, store
from appraiser.cli import app, render
from tests.conftest import REPO, use_home

# Rich would show "hidden ok" in white on white and an emoji for :warning:
MARKUP = "[white on white]hidden[/] :warning: ok"
FILE_NAME = "[white on white]hidden[/] ok.csv"  # the upload the review named
ESCAPE = "\x1b[8mgone\x1b[0m"  # a terminal's "hidden" sequence: shown as its escape, not obeyed
ESCAPE_SHOWN = "\\x1b[8mgone\\x1b[0m"

FORMULAS = ['=HYPERLINK("http://x")', "+1+1", "-2+3", "@SUM(A1)"]

runner = CliRunner()


def invoke(*args: str) -> str:
    result = runner.invoke(app, list(args), catch_exceptions=False)
    return result.output


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    use_home(tmp_path / "home")
    # tables unwrapped: a console fixes its width when made if COLUMNS is set then (xdist's
    # workers), so both consoles are widened themselves
    for console in (render.console, render.err):
        monkeypatch.setattr(console, "_width", 400)
    return tmp_path


def _stones(count: int) -> pd.DataFrame:
    stones = pd.DataFrame([schema.example_stone()] * count)
    stones["carat"] = [round(0.5 + 0.01 * i, 2) for i in range(count)]  # no two alike
    stones["price"] = 1000.0
    return stones.astype(object)


def test_literal_shows_markup_emoji_and_control_characters_as_written() -> None:
    assert render.literal(MARKUP).plain == MARKUP
    assert render.literal(f"a{ESCAPE}\u202eb\nc").plain == f"a{ESCAPE_SHOWN}\\u202eb\nc"


def test_keys_and_audit_show_who_acted_as_written(home: Path) -> None:
    auth.create_key("shop", "staff", actor=MARKUP + ESCAPE)
    assert MARKUP + ESCAPE_SHOWN in invoke("keys", "list")
    trail = invoke("audit")
    assert MARKUP + ESCAPE_SHOWN in trail and "\x1b" not in trail


def test_ingest_batches_and_rejected_show_file_names_and_reasons_as_written(home: Path) -> None:
    from appraiser import ingest

    stones = _stones(6)
    stones.loc[5, "carat"] = "[white on white]hidden[/]"
    local = home / "[white on white]hidden :warning: ok.csv"  # a local name has no "/"
    stones.to_csv(local, index=False)
    said = invoke("ingest", str(local))
    assert local.name in said
    reason = "carat: not a number ('[white on white]hidden[/]')"
    assert reason in said
    assert reason in invoke("rejected")
    uploaded = home / "upload.csv"
    stones.head(5).assign(carat=[1.5, 1.6, 1.7, 1.8, 1.9]).to_csv(uploaded, index=False)
    ingest.ingest_file(uploaded, name=FILE_NAME)  # as the API keeps an upload's name
    listed = invoke("batches")
    assert FILE_NAME in listed and local.name[-30:] in listed


def test_feedback_listing_and_errors_show_names_as_written(home: Path) -> None:
    uid = store.record_appraisal(
        schema.example_stone(), 5000.0, price_low=4500.0, price_high=5500.0, model_version="1"
    )
    feedback.submit(uid, 5100.0, actor=MARKUP)
    assert MARKUP in invoke("feedback", "list")
    assert f"no appraisal with id {MARKUP}" in invoke("feedback", "send", MARKUP, "5000")


def test_models_and_their_history_show_names_and_reasons_as_written(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from appraiser import champion
    from appraiser.registry import VersionInfo

    store.ready()
    with store.session() as s, s.begin():
        s.add(
            store.Promotion(version="2", previous="1", kind="promote", reason=MARKUP, actor=MARKUP)
        )
    history = invoke("models", "history")
    assert history.count(MARKUP) == 2

    made = pd.Timestamp("2026-01-01")
    shown = VersionInfo("2", True, made, "run", MARKUP, {"mape": 6.0, "coverage": 90.0}, "")
    monkeypatch.setattr(champion, "versions", lambda: [shown])  # MLflow's run tag, as read
    assert MARKUP in invoke("models")


# --- CSV cells a spreadsheet would run --------------------------------------------------------


def test_monitor_shows_stored_actors_and_reasons_as_written(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from appraiser import monitoring

    monkeypatch.setattr(monitoring, "overview", lambda hours: {})
    monkeypatch.setattr(monitoring, "summary", lambda figures: [f"promoted by {MARKUP}{ESCAPE}"])
    shown = invoke("monitor")
    assert f"promoted by {MARKUP}{ESCAPE_SHOWN}" in shown and "\x1b" not in shown


def test_formula_cells_get_a_quote_and_numbers_stay_numbers() -> None:
    frame = pd.DataFrame(
        {
            "note": [*FORMULAS, "-2", "plain", None],
            "asked": [-2.0, 1.0, -3.5, 4.0, 5.0, 6.0, 7.0],
            "mixed": pd.Series([-1, "=1+1", 2.5, "\t=1", "\r=1", "+4e5", None], dtype=object),
            "=cmd|' /C calc'!A0": 1,
        }
    )
    safe = data.formula_safe_frame(frame)
    assert safe["note"].tolist()[:6] == [*(f"'{f}" for f in FORMULAS), "-2", "plain"]
    assert safe["asked"].tolist() == frame["asked"].tolist()  # a negative number is no formula
    assert safe["mixed"].tolist()[:6] == [-1, "'=1+1", 2.5, "'\t=1", "'\r=1", "+4e5"]
    assert safe.columns[-1] == "'=cmd|' /C calc'!A0"
    assert frame["note"].iloc[0] == FORMULAS[0]  # the caller's frame is not changed
    clean = frame.drop(columns=["note", "mixed", "=cmd|' /C calc'!A0"])
    assert data.formula_safe_frame(clean) is clean


def test_the_page_download_defuses_the_same_first_characters() -> None:
    """One rule: the web page's CSV download (csvCell) and formula_safe start from one set."""
    script = (REPO / "src/appraiser/web/app.js").read_text()
    cell = script[script.index("function csvCell") :].split("\n  }\n", 1)[0]
    found = re.search(r"/\^\[([^\]]+)\]/\.test\(text\)", cell)
    assert found is not None, "csvCell's first-character test is not where this test looks"
    shown = found.group(1).replace("\\-", "-").replace("\\t", "\t").replace("\\r", "\r")
    assert set(shown) == set(data.FORMULA_START)


class _FlatPrices:
    """A model pricing every stone at $1,000: the writer is the subject here, not the model."""

    def predict(self, stones: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame(
            {"price": 1000.0, "price_low": 900.0, "price_high": 1100.0}, index=stones.index
        )


def test_predict_output_quotes_formulas_from_the_input(tmp_path: Path) -> None:
    stones = _stones(6).drop(columns="price")
    stones["note"] = [*FORMULAS, "-2", "fine"]
    stones["discount"] = [-5, 0, 1, 2, 3, 4]
    stones.loc[1, "cut"] = "=1+1"  # refused, and its value passes through to the output
    source, target = tmp_path / "in.csv", tmp_path / "out.csv"
    stones.to_csv(source, index=False)
    summary = predict.score_file(_FlatPrices(), source, target)  # type: ignore[arg-type]
    assert (summary.rows, summary.errors) == (6, 1)
    out = pd.read_csv(target, dtype=str, keep_default_na=False)
    assert out["note"].tolist() == [*(f"'{f}" for f in FORMULAS), "-2", "fine"]
    assert out.loc[1, "cut"] == "'=1+1" and "cut must be one of" in out.loc[1, "error"]
    assert out["discount"].tolist() == ["-5", "0", "1", "2", "3", "4"]
    assert float(out.loc[0, "price"]) == 1000.0


def test_rejected_export_quotes_formulas_and_keeps_numbers(home: Path) -> None:
    stones = _stones(8)
    for row, (column, value) in enumerate(
        zip(("carat", "cut", "color", "clarity"), FORMULAS, strict=True)
    ):
        stones.loc[row, column] = value
    stones.loc[4, "price"] = -1  # refused as a number out of bounds
    path = home / "batch.csv"
    stones.to_csv(path, index=False)
    invoke("ingest", str(path))
    export = home / "rejected.csv"
    invoke("rejected", "--output", str(export))
    out = pd.read_csv(export, dtype=str, keep_default_na=False)
    assert len(out) == 5
    cells = [
        out.loc[row, column] for row, column in enumerate(("carat", "cut", "color", "clarity"))
    ]
    assert cells == [f"'{f}" for f in FORMULAS]
    assert out.loc[4, "price"] in ("-1", "-1.0") and out["line"].tolist()[:2] == ["2", "3"]


def test_every_csv_written_goes_through_formula_safe_frame() -> None:
    """A new `.to_csv(...)` in the package must write `data.formula_safe_frame(...)`."""
    transport = {"api/routers/diamonds.py"}  # a JSON body as CSV bytes for the ingest, not people
    unsafe = []
    for path in (REPO / "src/appraiser").rglob("*.py"):
        name = path.relative_to(REPO / "src/appraiser").as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            if node.func.attr != "to_csv" or name in transport:
                continue
            target = node.func.value
            called = target.func if isinstance(target, ast.Call) else None
            if not (isinstance(called, ast.Attribute) and called.attr == "formula_safe_frame"):
                unsafe.append(f"{name}:{node.lineno}")
    assert not unsafe, f"CSV written without data.formula_safe_frame: {unsafe}"
