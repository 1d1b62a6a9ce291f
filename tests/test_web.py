"""Browser tests of the web page and the admin page: Debian's chromium driven by Playwright.

They run against the real app (`live_server`: uvicorn on a loopback port, a trained champion).
Without /usr/bin/chromium they are skipped locally and fail under CI (CI set), where it must exist.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Response, expect, sync_playwright

from appraiser.features import REASONS  # the contributions' keys: size, cut, ...
from tests.conftest import API_KEY
from tests.system import unavailable

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PRICE = re.compile(r"^\$\d{1,3}(,\d{3})*$")
RANGE = re.compile(r"90% range: \$[\d,]+ \u2013 \$[\d,]+")  # an en dash between
TIMEOUT_MS = 10_000
CSP = "Content Security Policy"  # in chromium's console message for each violation


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        unavailable(
            f"{CHROMIUM} is missing", "install Debian's chromium (apt-get install chromium)"
        )
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@dataclass
class Tab:
    """A fresh browser page on the live server, recording what it requests and any JS error."""

    page: Page
    base: str
    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    documents: list[Response] = field(default_factory=list)
    csp_violations: list[str] = field(default_factory=list)

    def on_response(self, response: Response) -> None:
        if response.request.resource_type == "document":
            self.documents.append(response)

    def on_console(self, message: ConsoleMessage) -> None:
        if CSP in message.text:
            self.csp_violations.append(message.text)

    def open(self, path: str) -> Page:
        self.page.goto(self.base + path)
        expect(self.page.locator("body[data-ready=true]")).to_have_count(1)
        return self.page


@pytest.fixture
def tab(browser: Browser, live_server: str) -> Iterator[Tab]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    expect.set_options(timeout=TIMEOUT_MS)
    page = context.new_page()
    tab = Tab(page, live_server)
    page.on("request", lambda request: tab.requests.append(request.url))
    page.on("pageerror", lambda error: tab.errors.append(str(error)))
    page.on("response", tab.on_response)
    page.on("console", tab.on_console)
    yield tab
    context.close()
    assert not tab.errors, f"JavaScript errors on the page: {tab.errors}"
    assert not tab.csp_violations, f"Content-Security-Policy violations: {tab.csp_violations}"


def appraise(page: Page) -> None:
    with page.expect_response(lambda r: "/v1/appraisals" in r.url):
        page.get_by_role("button", name="Appraise").click()


MONEY = r"\$[\d,]+"
SIGNED = r"\([+\u2212]\$[\d,]+\)|\(\$0\)"  # the difference from the stone's price


def what_if_text(better: str | None, worse: str | None) -> re.Pattern[str]:
    """A grade's what-if line: the price one grade better and one worse, "—" past the scale."""

    def side(words: str, grade: str | None) -> str:
        if grade is None:  # a dash, and for screen readers why
            return f"{words}: \u2014[^\u00b7]*"
        return f"{words} \\({grade}\\): {MONEY} (?:{SIGNED})"

    return re.compile(f"{side('One grade better', better)} \u00b7 {side('one worse', worse)}")


def test_the_form_prices_a_stone_and_explains_it(tab: Tab) -> None:
    page = tab.open("/")
    # built from /v1/schema, prefilled with its example, best grade last
    cut = page.get_by_label("Cut", exact=True)
    expect(cut).to_have_value("Ideal")
    assert cut.locator("option").all_inner_texts()[-1] == "Ideal"
    assert page.get_by_label("Clarity").locator("option").all_inner_texts()[-1] == "IF"

    page.get_by_label("Carat").fill("1.3")
    page.get_by_label("Color").select_option("G")
    page.get_by_label("Clarity").select_option("VS2")
    appraise(page)

    expect(page.locator("#error")).to_be_hidden()
    price = page.locator("#price")
    expect(price).to_have_text(PRICE)
    expect(page.locator("#range")).to_contain_text(RANGE)
    expect(page.locator("#model-version")).to_contain_text("version")
    expect(page.locator("#appraisal-id")).to_have_text(re.compile(r"^\w{8,}$"))

    chart = page.locator("#chart svg")
    bars = chart.locator("g.bar.contribution")
    expect(bars).to_have_count(len(REASONS))
    assert sorted(bars.evaluate_all("gs => gs.map(g => g.dataset.feature)")) == sorted(REASONS)
    # each reason in a jeweller's words, with the stone's values (the example's measurements)
    label = "g.bar[data-feature='{}'] > text >> nth=0"
    size = re.compile(r"^Size \(1\.3 ct, 6\.61 \u00d7 6\.65 \u00d7 4\.11 mm\)$")
    expect(chart.locator(label.format("size"))).to_have_text(size)
    expect(chart.locator(label.format("cut"))).to_have_text("Cut (Ideal)")
    expect(chart.locator(label.format("color"))).to_have_text("Color (G)")
    expect(chart.locator(label.format("clarity"))).to_have_text("Clarity (VS2)")
    proportions = chart.locator(label.format("proportions"))
    expect(proportions).to_have_text("Proportions (depth 62%, table 55%)")
    # drawn inside the chart (long labels move above the bars rather than off its left edge)
    assert chart.locator(label.format("size")).evaluate("t => t.getBBox().x") >= 0
    expect(chart.locator("g.bar.baseline")).to_have_count(1)
    # the waterfall ends at the price shown, and each bar's label has its signed dollars
    expect(chart.locator("g.bar.total")).to_contain_text(price.inner_text())
    for label in bars.all_text_contents():
        assert re.search(r"[+\u2212]\$[\d,]+$|\$0$", label), label

    # the price one grade better and one worse, per grade; Ideal is the best cut already
    what_if = page.get_by_role("list", name="One grade better or worse")
    expect(what_if.get_by_role("listitem")).to_have_count(3)
    cut_line = what_if.locator("li[data-grade=cut]")
    expect(cut_line).to_contain_text("Cut (Ideal)")
    expect(cut_line).to_contain_text(what_if_text(None, "Premium"))
    expect(what_if.locator("li[data-grade=color]")).to_contain_text(what_if_text("F", "H"))
    expect(what_if.locator("li[data-grade=clarity]")).to_contain_text(what_if_text("VS1", "SI1"))
    expect(page.locator("#deal")).to_be_hidden()  # no asking price, no verdict

    rows = page.locator("#comparables tbody tr")
    expect(rows.first).to_contain_text("$")
    assert rows.count() >= 1
    expect(rows.first).to_contain_text("VS2")

    # an expert's price needs an expert key: without one, the server's 401 beside the key field
    key_field = page.get_by_label("Expert key")
    status = page.locator("#feedback-status")
    page.get_by_label("Expert price").fill("5100")
    page.get_by_role("button", name="Send expert price").click()
    expect(status).to_have_text("Not sent.")
    expect(page.locator("#expert-key-error")).to_contain_text("needs an expert key")
    expect(key_field).to_have_attribute("aria-invalid", "true")

    # a staff key may appraise but not teach: the server's 403
    from appraiser import auth

    key_field.fill(auth.create_key("staff-web", "staff", actor="test"))
    page.get_by_role("button", name="Send expert price").click()
    expect(page.locator("#expert-key-error")).to_contain_text("needs the expert role")
    expect(status).to_have_text("Not sent.")

    # an expert's key: kept pending for an admin, and kept in this tab for the next price
    expert = auth.create_key("expert-web", "expert", actor="test")
    key_field.fill(expert)
    expect(key_field).not_to_have_attribute("aria-invalid", "true")
    page.get_by_role("button", name="Send expert price").click()
    sent = "Sent for review: an admin approves it before it teaches the model."
    expect(status).to_have_text(sent)
    expect(page.locator("#expert-key-error")).to_be_empty()
    assert page.evaluate("sessionStorage.getItem('appraiser.expertKey')") == expert
    pending = httpx.get(f"{tab.base}/v1/feedback?status=pending", headers=bearer(API_KEY))
    assert [(p["price"], p["expert"]) for p in pending.json()] == [(5100, "expert-web")]
    page.reload()
    expect(page.get_by_label("Expert key")).to_have_value(expert)


def test_an_asking_price_gets_a_verdict(tab: Tab) -> None:
    page = tab.open("/")
    asking = page.get_by_label("Asking price")
    verdict = page.locator("#deal-verdict")
    asking.fill("100")  # far below any 1.1 ct stone's price
    appraise(page)
    expect(page.locator("#deal")).to_be_visible()
    expect(verdict).to_have_text("Below market")
    expect(verdict).to_have_class(re.compile(r"\bbelow\b"))
    expect(page.locator("#deal-asking")).to_have_text("$100")
    expect(page.locator("#deal-message")).to_contain_text("$100 is likely a bargain")
    expect(page.locator("#form-status")).to_contain_text("Asking price: Below market.")

    asking.fill("200000")  # far above
    appraise(page)
    expect(verdict).to_have_text("Above market")
    expect(verdict).to_have_class(re.compile(r"\babove\b"))
    expect(page.locator("#deal-message")).to_contain_text("more than the market pays")

    # the server's 422 beside the field, like the stone's fields
    asking.fill("-5")
    appraise(page)
    expect(asking).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#f-asking_price-error")).to_contain_text("greater than 0")
    expect(page.locator("#error")).to_contain_text("asking_price")

    # emptied, the stone prices without the deal check
    asking.fill("")
    appraise(page)
    expect(page.locator("#price")).to_have_text(PRICE)
    expect(page.locator("#deal")).to_be_hidden()
    expect(asking).not_to_have_attribute("aria-invalid", "true")


SUPPLIER_LIST = (
    "carat,cut,color,clarity,depth,table,x,y,z,asking_price\n"
    "1.017,Ideal,H,SI2,62.0,55.5,6.61,6.65,4.11,900\n"
    "0.513,Premium,G,VS1,61.9,58.5,5.10,5.14,3.17,60000\n"
    "0.327,Very Good,E,VVS2,61.7,57.5,4.40,4.42,2.72,\n"
    "0.9,Excellent,G,VS2,61.8,57,6.20,6.24,3.85,3000\n"
    "0.719,Good,F,SI1,62.1,59.5,5.70,5.74,3.55,2500\n"
    "1.21,Ideal,G,VS2,61.8,57,6.84,6.88,4.24,6000\n"
)


def prices_in(page: Page) -> list[float]:
    texts = page.locator("#list-table tbody td.col-price").all_inner_texts()
    return [float(t.strip("$").replace(",", "")) for t in texts if t != "\u2014"]


def test_a_suppliers_list_is_priced_sorted_and_downloaded(tab: Tab, tmp_path: Path) -> None:
    lot = tmp_path / "lot.csv"
    lot.write_text(SUPPLIER_LIST)
    page = tab.open("/")
    section = page.get_by_role("region", name="Price a supplier's list")
    section.get_by_role("button", name="Price the list").click()
    expect(page.locator("#list-file-error")).to_contain_text("Choose the supplier's CSV")

    page.get_by_label("Supplier's CSV file").set_input_files(lot)
    with page.expect_response(lambda r: r.url.endswith("/v1/appraisals/list")):
        section.get_by_role("button", name="Price the list").click()
    expect(page.locator("#list-error")).to_be_hidden()
    expect(page.locator("#list-summary")).to_contain_text("5 priced, 1 refused")

    rows = page.locator("#list-table tbody tr")
    expect(rows).to_have_count(6)
    refused = page.locator("#list-table tbody tr.refused")
    expect(refused).to_have_count(1)
    expect(refused).to_contain_text("Excellent")
    expect(refused.locator("td.col-notes")).to_contain_text("Refused: cut must be one of")
    expect(refused.locator("td.col-price")).to_have_text("\u2014")
    # the stone asked at $900 is a bargain, highlighted; the one at $60,000 is above market
    bargain = page.locator("#list-table tbody tr[data-row='1']")
    expect(bargain).to_have_class("bargain")
    expect(bargain).to_contain_text("1.017")
    expect(bargain.locator("td.col-verdict")).to_have_text("Below market")
    expect(bargain.locator("td.col-bargain_probability")).to_have_text(re.compile(r"^[<>]?\d+%$"))
    dear = page.locator("#list-table tbody tr[data-row='2']")
    expect(dear.locator("td.col-verdict")).to_have_text("Above market")
    expect(page.locator("#list-table tbody tr[data-row='3'] td.col-verdict")).to_have_text("")
    assert len(prices_in(page)) == 5

    # sorting by price: ascending, then descending; the refused row stays last
    price_head = page.locator("#list-table th[data-column=price]")
    section.get_by_role("button", name="Price", exact=True).click()
    expect(price_head).to_have_attribute("aria-sort", "ascending")
    expect(page.locator("#list-table th[aria-sort]")).to_have_count(1)
    assert prices_in(page) == sorted(prices_in(page))
    expect(rows.last).to_have_class("refused")
    section.get_by_role("button", name="Price", exact=True).click()
    expect(price_head).to_have_attribute("aria-sort", "descending")
    assert prices_in(page) == sorted(prices_in(page), reverse=True)
    expect(rows.last).to_have_class("refused")

    # the CSV, built in the page: every column, one line per row of the list, in its order
    with page.expect_download() as info:
        section.get_by_role("button", name="Download CSV").click()
    download = info.value
    assert download.suggested_filename == "lot-priced.csv"
    with open(download.path(), newline="", encoding="utf-8") as handle:
        got = list(csv.DictReader(handle))
    assert len(got) == 6
    header = list(got[0])
    for column in ["carat", "cut", "asking_price", "price", "price_low", "price_high"]:
        assert column in header, header
    for column in ["bargain_probability", "verdict", "warnings", "error"]:
        assert column in header, header
    assert [row["carat"] for row in got] == ["1.017", "0.513", "0.327", "0.9", "0.719", "1.21"]
    assert got[3]["price"] == "" and got[3]["error"].startswith("cut must be one of")
    assert got[0]["verdict"] == "below market" and float(got[0]["bargain_probability"]) > 0.5
    assert all(float(row["price"]) > 0 for row in got if not row["error"])


def test_bad_values_show_the_error_beside_the_field(tab: Tab) -> None:
    page = tab.open("/")
    carat = page.get_by_label("Carat")
    carat.fill("0")
    appraise(page)
    error = page.get_by_role("alert").filter(has_text="carat")
    expect(error).to_be_visible()
    expect(carat).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#f-carat-error")).to_contain_text("greater than 0")
    expect(page.locator("#result")).to_be_hidden()

    # measurements that disagree with the depth: the rule is named, the depth field marked
    page.get_by_role("button", name="Reset to example").click()
    expect(carat).not_to_have_attribute("aria-invalid", "true")
    page.get_by_label("Total depth").fill("70")
    appraise(page)
    expect(page.locator("#error")).to_contain_text("depth must agree with 2 z / (x + y)")
    expect(page.get_by_label("Total depth")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#f-depth-error")).to_contain_text("x, y, z imply")

    # corrected, it prices
    page.get_by_label("Total depth").fill("62")
    appraise(page)
    expect(page.locator("#error")).to_be_hidden()
    expect(page.locator("#price")).to_have_text(PRICE)


def test_admin_uploads_a_csv_and_lists_the_models(tab: Tab, tmp_path: Path) -> None:
    csv = tmp_path / "lot.csv"
    csv.write_text(
        "carat,cut,color,clarity,depth,table,x,y,z,price\n"
        "1.017,Ideal,H,SI2,62.0,55.5,6.61,6.65,4.11,4873\n"
        "0.513,Premium,G,VS1,61.9,58.5,5.10,5.14,3.17,1832\n"
        "0.327,Very Good,E,VVS2,61.7,57.5,4.40,4.42,2.72,1021\n"
        "0.719,Good,F,SI1,62.1,59.5,5.70,5.74,3.55,-1\n"
    )
    page = tab.open("/admin")

    # the model versions need a key: none is entered yet
    expect(page.locator("#models-status")).to_contain_text("Enter an API key")
    expect(page.locator("#models tbody tr")).to_have_count(0)

    # a wrong key: the server's message, the key marked invalid
    page.get_by_label("Admin API key").fill("not-the-key")
    page.get_by_label("CSV file").set_input_files(csv)
    page.get_by_role("button", name="Upload").click()
    expect(page.locator("#upload-error")).to_contain_text("Wrong or missing API key")
    expect(page.get_by_label("Admin API key")).to_have_attribute("aria-invalid", "true")

    page.get_by_label("Admin API key").fill(API_KEY)
    page.get_by_role("button", name="Use this key").click()
    assert page.evaluate("sessionStorage.getItem('appraiser.apiKey')") == API_KEY
    # the models, with the champion marked
    champion = page.locator("#models tbody tr.champion")
    expect(champion).to_have_count(1)
    expect(champion).to_contain_text("Champion")
    expect(champion.locator("td.num").first).to_have_text(re.compile(r"^\d+\.\d$"))
    expect(champion.get_by_role("button", name=re.compile("Promote"))).to_have_count(0)
    page.get_by_label("Source").fill("browser test")
    page.get_by_role("button", name="Upload").click()

    expect(page.locator("#report")).to_be_visible()
    expect(page.locator("#upload-error")).to_be_hidden()
    expect(page.locator("#rows-read")).to_have_text("4")
    expect(page.locator("#rows-accepted")).to_have_text("3")
    expect(page.locator("#rows-rejected")).to_have_text("1")
    reasons = page.locator("#reasons tbody tr")
    expect(reasons).to_have_count(1)
    expect(reasons.first).to_contain_text("price")
    rejected = page.locator("#rejected tbody tr")
    expect(rejected).to_have_count(1)
    expect(rejected.first).to_contain_text("-1")
    expect(rejected.first).to_contain_text("price")


def test_the_pages_load_nothing_from_another_origin(tab: Tab) -> None:
    page = tab.open("/")
    appraise(page)
    expect(page.locator("#price")).to_have_text(PRICE)
    tab.open("/admin")
    use_key(page, API_KEY)
    expect(page.locator("#models tbody tr.champion")).to_have_count(1)
    # the API reference: Swagger UI from the installed assets, started by /static/docs.js
    page.goto(tab.base + "/docs")
    expect(page.locator(".swagger-ui .info")).to_contain_text("Diamond Appraiser")
    expect(page.locator(".swagger-ui .opblock").first).to_be_visible()

    assert any(url.endswith("/static/app.js") for url in tab.requests)
    assert any(url.endswith("/static/admin.js") for url in tab.requests)
    assert any(url.endswith("/static/style.css") for url in tab.requests)
    assert any(url.endswith("/docs/assets/swagger-ui-bundle.js") for url in tab.requests)
    assert any(url.endswith("/static/docs.js") for url in tab.requests)
    foreign = [url for url in tab.requests if not url.startswith(tab.base + "/")]
    assert not foreign, f"requests to other origins (the page must work offline): {foreign}"

    # each page came with the hardening headers, and the browser refused nothing under them
    paths = [d.url.removeprefix(tab.base) for d in tab.documents]
    assert paths == ["/", "/admin", "/docs"]
    for document in tab.documents:
        headers = document.headers
        assert "default-src 'self'" in headers.get("content-security-policy", ""), document.url
        framing = headers.get("x-frame-options", "").upper() == "DENY"
        assert framing or "frame-ancestors 'none'" in headers["content-security-policy"]
        assert headers.get("x-content-type-options") == "nosniff", document.url
    assert not tab.csp_violations, f"Content-Security-Policy violations: {tab.csp_violations}"


# --- the review queue of experts' prices -----------------------------------------------------

STONES = [  # measurements that agree with the depth
    {"carat": 1.02, "cut": "Ideal", "color": "H", "clarity": "SI2"}
    | {"depth": 62.0, "table": 55.5, "x": 6.61, "y": 6.65, "z": 4.11},
    {"carat": 0.51, "cut": "Premium", "color": "G", "clarity": "VS1"}
    | {"depth": 61.9, "table": 58.5, "x": 5.10, "y": 5.14, "z": 3.17},
]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def expert_prices(base: str, factors: list[float]) -> list[dict]:
    """An expert key's prices (the appraised price times each factor) for stones appraised on
    the live server, one stone per factor: the pending ExpertPrice answers, in that order."""
    from appraiser import auth

    key = auth.create_key("expert-x", "expert", actor="test")
    sent = []
    with httpx.Client(base_url=base, timeout=30) as client:
        for stone, factor in zip(STONES, factors, strict=False):
            appraisal = client.post("/v1/appraisals", json=stone)
            assert appraisal.status_code == 200, appraisal.text
            answer = appraisal.json()
            price = round(answer["price"] * factor)
            url = f"/v1/appraisals/{answer['id']}/feedback"
            given = client.post(url, json={"price": price}, headers=bearer(key))
            assert given.status_code == 201, given.text
            assert given.json()["status"] == "pending"
            sent.append(given.json())
    return sent


def use_key(page: Page, key: str) -> None:
    page.get_by_label("Admin API key").fill(key)
    page.get_by_role("button", name="Use this key").click()


def test_admin_approves_and_rejects_expert_prices(tab: Tab) -> None:
    fair, absurd = expert_prices(tab.base, [1.04, 10])
    assert fair["flag"] is None and absurd["flag"], (fair, absurd)

    page = tab.open("/admin")
    status = page.locator("#review-status")
    rows = page.locator("#review tbody tr")
    # no key yet: the queue says it needs one
    expect(status).to_contain_text("Enter an admin API key")
    expect(rows).to_have_count(0)

    # an expert key may not review: the server's refusal, in the section's alert
    from appraiser import auth

    use_key(page, auth.create_key("expert-y", "expert", actor="test"))
    expect(page.locator("#review-error")).to_contain_text("needs the admin role")
    expect(rows).to_have_count(0)

    use_key(page, API_KEY)
    expect(page.locator("#review-error")).to_be_hidden()
    expect(rows).to_have_count(2)
    expect(status).to_have_text("2 prices wait for review.")
    fair_row = page.locator(f"#review tbody tr[data-id='{fair['id']}']")
    absurd_row = page.locator(f"#review tbody tr[data-id='{absurd['id']}']")
    expect(fair_row).to_contain_text("1.02 ct Ideal H SI2")
    expect(fair_row).to_contain_text(fair["appraisal_id"][-8:])
    expect(fair_row).to_contain_text("expert-x")
    expect(fair_row).not_to_contain_text("Flagged")
    expect(absurd_row).to_contain_text("0.51 ct Premium G VS1")
    expect(absurd_row).to_contain_text("Flagged")
    expect(absurd_row).to_contain_text(absurd["flag"])
    expect(absurd_row).to_contain_text(f"${absurd['price']:,.0f}")
    expect(absurd_row).to_contain_text(f"${absurd['appraised_price']:,.0f}")

    page.get_by_role("button", name=f"Approve price {fair['id']}").click()
    expect(fair_row).to_contain_text("Approved")
    expect(fair_row.get_by_role("button")).to_have_count(0)
    expect(status).to_have_text(f"Price {fair['id']} approved. 1 price waits for review.")

    page.get_by_role("button", name=f"Reject price {absurd['id']}").click()
    expect(absurd_row).to_contain_text("Rejected")
    expect(absurd_row.get_by_role("button")).to_have_count(0)
    expect(status).to_have_text(f"Price {absurd['id']} rejected. Nothing to review.")
    expect(page.locator("#review-error")).to_be_hidden()

    admin = bearer(API_KEY)
    approved = httpx.get(f"{tab.base}/v1/feedback?status=approved", headers=admin).json()
    assert [(p["id"], p["price"], p["reviewed_by"]) for p in approved] == [
        (fair["id"], fair["price"], "bootstrap-admin")
    ]
    rejected = httpx.get(f"{tab.base}/v1/feedback?status=rejected", headers=admin).json()
    assert [p["id"] for p in rejected] == [absurd["id"]]

    page.get_by_role("button", name="Refresh the review queue").click()
    expect(status).to_have_text("Nothing to review.")
    expect(rows).to_have_count(0)


def test_a_price_reviewed_elsewhere_is_not_reviewed_twice(tab: Tab) -> None:
    (sent,) = expert_prices(tab.base, [1.0])
    page = tab.open("/admin")
    use_key(page, API_KEY)
    expect(page.locator("#review tbody tr")).to_have_count(1)

    # another admin approves it meanwhile; this page's Reject then gets the server's 409
    done = httpx.post(f"{tab.base}/v1/feedback/{sent['id']}/approve", headers=bearer(API_KEY))
    assert done.status_code == 200, done.text
    page.get_by_role("button", name=f"Reject price {sent['id']}").click()
    expect(page.locator("#review-error")).to_contain_text("approved already by bootstrap-admin")
    expect(page.locator("#review tbody tr").get_by_role("button")).to_have_count(0)
    expect(page.locator("#review-status")).to_contain_text("Nothing to review")
