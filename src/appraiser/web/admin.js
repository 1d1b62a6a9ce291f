// The admin page: the API key (session storage only), the review queue of experts' prices
// (approve or reject each), CSV upload with its ingestion report, the model versions with their
// metrics and a Promote button, and a background retrain with its status polled every 2 s.
// Plain ES2020, no dependencies.
"use strict";

(() => {
  const KEY_STORAGE = "appraiser.apiKey";
  const POLL_MS = 2000;
  const REVIEW_LIMIT = 200; // the oldest this many pending prices are listed
  const $ = (id) => document.getElementById(id);

  // --- helpers ------------------------------------------------------------------------------

  const { ApiError, request, el } = window.AppraiserWeb;

  function storedKey() {
    try {
      return sessionStorage.getItem(KEY_STORAGE) || "";
    } catch (_) {
      return "";
    }
  }

  function saveKey(key) {
    try {
      if (key) sessionStorage.setItem(KEY_STORAGE, key);
      else sessionStorage.removeItem(KEY_STORAGE);
    } catch (_) {
      /* storage disabled: the key lives in the field only */
    }
  }

  /** The key typed in the field (saved for this tab), or null after asking for one. */
  function currentKey() {
    const field = $("api-key");
    const key = field.value.trim();
    if (key) {
      if (key !== storedKey()) saveKey(key);
      return key;
    }
    field.setAttribute("aria-invalid", "true");
    $("key-status").textContent = "Enter the admin API key first.";
    field.focus();
    return null;
  }

  /** request(), with the two key refusals said in the admin's terms. */
  async function api(method, url, options = {}) {
    try {
      return await request(method, url, options);
    } catch (error) {
      if (error instanceof ApiError && error.status === 401) {
        error.message = `Wrong or missing API key: ${error.message}`;
      } else if (error instanceof ApiError && error.status === 403) {
        error.message = `This key may not do that (an admin key is needed): ${error.message}`;
      }
      throw error;
    }
  }

  function showAlert(id, message) {
    const box = $(id);
    box.textContent = message;
    box.hidden = false;
  }

  function hideAlert(id) {
    $(id).hidden = true;
    $(id).textContent = "";
  }

  function onKeyError(error) {
    if (error instanceof ApiError && error.status === 401) $("api-key").setAttribute("aria-invalid", "true");
  }

  const count = (n) => (typeof n === "number" ? n.toLocaleString("en-US") : "\u2014");
  const money = new Intl.NumberFormat("en-US", { style: "currency", currency: "USD", maximumFractionDigits: 0 });
  const dollars = (v) => (typeof v === "number" && Number.isFinite(v) ? money.format(v) : "\u2014");
  const plural = (n, one, many) => `${count(n)} ${n === 1 ? one : many}`;
  const pct = (v) => (typeof v === "number" && Number.isFinite(v) ? v.toFixed(1) : "\u2014");
  const cell = (v) => (v === null || v === undefined ? "" : typeof v === "object" ? JSON.stringify(v) : String(v));

  function fmtDate(value) {
    const date = new Date(value);
    if (Number.isNaN(date.getTime())) return String(value || "");
    return date.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
  }

  // --- the key ------------------------------------------------------------------------------

  function setUpKey() {
    const field = $("api-key");
    field.value = storedKey();
    if (field.value) $("key-status").textContent = "Using the key saved in this tab.";
    $("key-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const key = field.value.trim();
      field.removeAttribute("aria-invalid");
      if (!key) {
        field.setAttribute("aria-invalid", "true");
        $("key-status").textContent = "Enter the admin API key.";
        field.focus();
        return;
      }
      saveKey(key);
      $("key-status").textContent = "Key kept for this browser tab.";
      loadReview();
    });
    $("key-forget").addEventListener("click", () => {
      saveKey("");
      field.value = "";
      field.removeAttribute("aria-invalid");
      $("key-status").textContent = "Key forgotten.";
      clearReview();
    });
    field.addEventListener("input", () => field.removeAttribute("aria-invalid"));
  }

  // --- expert prices to review ------------------------------------------------------------

  let reviewRun = 0; // only the latest load draws the table
  let reviewCut = false; // the queue is longer than the rows listed

  const NEEDS_KEY = "Enter an admin API key above to see the expert prices waiting for review.";

  function clearReview(message = NEEDS_KEY) {
    reviewRun += 1;
    reviewCut = false;
    hideAlert("review-error");
    showRows([]);
    $("review-status").textContent = message;
  }

  function showRows(rows) {
    document.querySelector("#review tbody").replaceChildren(...rows);
    $("review-wrap").hidden = rows.length === 0;
  }

  function pendingLeft() {
    return document.querySelectorAll('#review tbody tr[data-status="pending"]').length;
  }

  function queueText(n) {
    if (reviewCut) {
      if (n === 0) return "Nothing left in this list: Refresh to list the next prices.";
      return `${plural(n, "price waits", "prices wait")} for review (the oldest ${count(REVIEW_LIMIT)} were listed; more may wait).`;
    }
    if (n === 0) return "Nothing to review.";
    return `${plural(n, "price waits", "prices wait")} for review.`;
  }

  /** "1.02 ct Ideal H SI2", and the measurements for a second line. */
  function stoneLine(stone) {
    const carat = typeof stone.carat === "number" ? stone.carat.toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 3 }) : cell(stone.carat);
    return [`${carat} ct`, stone.cut, stone.color, stone.clarity].filter((v) => v !== undefined && v !== null && v !== "").join(" ");
  }

  function stoneDetail(stone) {
    const mm = [stone.x, stone.y, stone.z].every((v) => typeof v === "number") ? `${stone.x} \u00d7 ${stone.y} \u00d7 ${stone.z} mm` : "";
    return [typeof stone.depth === "number" ? `depth ${stone.depth}%` : "", typeof stone.table === "number" ? `table ${stone.table}%` : "", mm].filter(Boolean).join(", ");
  }

  function range(item) {
    const known = typeof item.price_low === "number" && typeof item.price_high === "number";
    return known ? `${dollars(item.price_low)} \u2013 ${dollars(item.price_high)}` : "no range";
  }

  function difference(price, appraised) {
    if (typeof price !== "number" || typeof appraised !== "number" || appraised <= 0) return "";
    const change = Math.round((price / appraised - 1) * 100);
    if (change === 0) return "as the model";
    return `${change > 0 ? "+" : "\u2212"}${count(Math.abs(change))}% vs the model`;
  }

  function verdictBadge(item) {
    const approved = item.status === "approved";
    const cellNode = el("td", { className: "verdict" }, el("span", { className: `badge ${approved ? "ok" : "bad"}`, text: approved ? "Approved" : "Rejected" }));
    if (item.reviewed_by) cellNode.append(el("span", { className: "hint block", text: `by ${item.reviewed_by}` }));
    return cellNode;
  }

  function reviewRow(item) {
    const stone = item.stone || {};
    // an id's first digits are its time (alike for appraisals made together): show its last ones
    const shortId = `\u2026${String(item.appraisal_id || "").slice(-8)}`;
    const flag = item.flag
      ? el("td", {}, el("span", { className: "badge warn", text: "\u26a0 Flagged" }), el("span", { className: "flag-text", text: item.flag }))
      : el("td", {}, el("span", { className: "hint", text: "\u2014" }));
    const row = el(
      "tr",
      { "data-id": item.id, "data-status": item.status, className: item.flag ? "flagged" : null },
      el("th", { scope: "row" }, el("code", { title: item.appraisal_id, text: shortId })),
      el("td", {}, el("span", { className: "stone-line", text: stoneLine(stone) }), el("span", { className: "hint block", text: stoneDetail(stone) })),
      el("td", { className: "num" }, dollars(item.appraised_price), el("span", { className: "hint block", text: range(item) })),
      el("td", { className: "num" }, el("strong", { text: dollars(item.price) }), el("span", { className: "hint block", text: difference(item.price, item.appraised_price) })),
      el("td", { className: "expert" }, item.expert || "\u2014", el("span", { className: "hint block", text: fmtDate(item.created_at) })),
      flag
    );
    if (item.status !== "pending") {
      row.append(verdictBadge(item));
      return row;
    }
    const approve = el("button", { type: "button", className: "small", "aria-label": `Approve price ${item.id}`, text: "Approve" });
    const reject = el("button", { type: "button", className: "secondary small", "aria-label": `Reject price ${item.id}`, text: "Reject" });
    approve.addEventListener("click", () => reviewPrice(item, "approve", row));
    reject.addEventListener("click", () => reviewPrice(item, "reject", row));
    row.append(el("td", { className: "verdict" }, el("span", { className: "actions" }, approve, reject)));
    return row;
  }

  /** The pending prices; `ask`: prompt for the key when none is entered (a click), rather than
   * just saying one is needed (the page opening). */
  async function loadReview({ ask = false } = {}) {
    const key = ask ? currentKey() : $("api-key").value.trim() || storedKey();
    if (!key) {
      clearReview();
      return;
    }
    const run = ++reviewRun;
    hideAlert("review-error");
    $("review-status").textContent = "Loading the expert prices\u2026";
    let items;
    try {
      items = await api("GET", `/v1/feedback?status=pending&limit=${REVIEW_LIMIT}`, { key });
    } catch (error) {
      if (run !== reviewRun) return;
      onKeyError(error);
      showRows([]);
      showAlert("review-error", error.message);
      $("review-status").textContent = "The review queue could not be loaded.";
      return;
    }
    if (run !== reviewRun) return;
    const list = Array.isArray(items) ? items : [];
    reviewCut = list.length >= REVIEW_LIMIT;
    showRows(list.map(reviewRow));
    $("review-status").textContent = queueText(list.length);
  }

  /** The buttons just clicked are gone: keep the keyboard in the queue, on the next price. */
  function focusNext(row) {
    const pending = [...document.querySelectorAll('#review tbody tr[data-status="pending"]')];
    const next = pending.find((r) => row.compareDocumentPosition(r) & Node.DOCUMENT_POSITION_FOLLOWING) || pending[0];
    (next ? next.querySelector("button") : $("review-refresh")).focus();
  }

  async function reviewPrice(item, verdict, row) {
    const key = currentKey();
    if (!key) return;
    hideAlert("review-error");
    const buttons = row.querySelectorAll("td.verdict button");
    for (const b of buttons) b.disabled = true;
    const doing = verdict === "approve" ? "Approving" : "Rejecting";
    $("review-status").textContent = `${doing} price ${item.id}\u2026`;
    try {
      const answer = await api("POST", `/v1/feedback/${encodeURIComponent(item.id)}/${verdict}`, { key });
      row.dataset.status = answer.status;
      row.lastElementChild.replaceWith(verdictBadge(answer));
      $("review-status").textContent = `Price ${item.id} ${answer.status}. ${queueText(pendingLeft())}`;
      focusNext(row);
    } catch (error) {
      onKeyError(error);
      showAlert("review-error", error.message);
      if (error instanceof ApiError && (error.status === 409 || error.status === 404)) {
        // reviewed already (or gone): the buttons can do nothing more; Refresh shows the queue
        row.dataset.status = "gone";
        const why = error.status === 409 ? "Reviewed already" : "Not found";
        row.lastElementChild.replaceWith(el("td", { className: "verdict" }, el("span", { className: "hint", text: `${why}: see the message above` })));
        $("review-status").textContent = `Price ${item.id} was not changed. ${queueText(pendingLeft())}`;
        focusNext(row);
      } else {
        for (const b of buttons) b.disabled = false;
        $("review-status").textContent = `Price ${item.id} was not reviewed.`;
      }
    }
  }

  // --- upload -------------------------------------------------------------------------------

  function showReport(report) {
    $("report").hidden = false;
    $("report-message").textContent = report.already_ingested
      ? `This file was already ingested (batch ${report.batch_id}): nothing added.`
      : `Batch ${report.batch_id}: ${count(report.rows_accepted)} of ${count(report.rows_read)} rows accepted, ${count(report.rows_rejected)} rejected.`;
    $("rows-read").textContent = count(report.rows_read);
    $("rows-accepted").textContent = count(report.rows_accepted);
    $("rows-rejected").textContent = count(report.rows_rejected);
    $("batch-id").textContent = report.batch_id === null || report.batch_id === undefined ? "\u2014" : String(report.batch_id);

    const reasons = Object.entries(report.rejected_by_reason || {}).sort((a, b) => b[1] - a[1]);
    $("reasons-block").hidden = reasons.length === 0;
    document.querySelector("#reasons tbody").replaceChildren(
      ...reasons.map(([reason, rows]) => el("tr", {}, el("td", { text: reason }), el("td", { className: "num", text: count(rows) })))
    );

    const rows = report.rejected_rows || [];
    $("rejected-block").hidden = rows.length === 0;
    const head = document.querySelector("#rejected thead tr");
    const body = document.querySelector("#rejected tbody");
    head.replaceChildren();
    body.replaceChildren();
    if (!rows.length) return;
    const first = ["line", "reasons"];
    const rest = [];
    for (const row of rows) for (const key of Object.keys(row)) if (!first.includes(key) && key !== "batch_id" && !rest.includes(key)) rest.push(key);
    const columns = [...first, ...rest];
    head.append(...columns.map((c) => el("th", { scope: "col", className: c === "line" ? "num" : null, text: c === "line" ? "Line" : c === "reasons" ? "Reasons" : c })));
    for (const row of rows) {
      body.append(el("tr", {}, ...columns.map((c) => el("td", { className: c === "line" ? "num" : null, text: cell(row[c]) }))));
    }
    const shown = rows.length;
    $("rejected-caption").textContent =
      report.rows_rejected > shown
        ? `The first ${count(shown)} of ${count(report.rows_rejected)} rejected rows (line numbers count the header as line 1).`
        : "Every rejected row, with the values as sent (line numbers count the header as line 1).";
  }

  function setUpUpload() {
    const form = $("upload-form");
    const fileField = $("csv-file");
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      hideAlert("upload-error");
      fileField.removeAttribute("aria-invalid");
      $("csv-file-error").textContent = "";
      const file = fileField.files && fileField.files[0];
      if (!file) {
        fileField.setAttribute("aria-invalid", "true");
        $("csv-file-error").textContent = "Choose a CSV file.";
        fileField.focus();
        return;
      }
      const key = currentKey();
      if (!key) return;
      const data = new FormData();
      data.append("file", file, file.name);
      const source = $("csv-source").value.trim();
      if (source) data.append("source", source);
      const button = $("upload-submit");
      button.disabled = true;
      $("upload-status").textContent = `Uploading ${file.name}\u2026`;
      try {
        const report = await api("POST", "/v1/diamonds", { form: data, key });
        showReport(report);
        $("upload-status").textContent = `${file.name}: ${count(report.rows_accepted)} accepted, ${count(report.rows_rejected)} rejected.`;
      } catch (error) {
        onKeyError(error);
        $("report").hidden = true;
        showAlert("upload-error", error.message);
        $("upload-status").textContent = "Upload failed.";
      } finally {
        button.disabled = false;
      }
    });
  }

  // --- models -------------------------------------------------------------------------------

  async function loadModels(note) {
    hideAlert("models-error");
    $("models-status").textContent = "Loading models\u2026";
    let answer;
    try {
      answer = await api("GET", "/v1/models");
    } catch (error) {
      showAlert("models-error", error.message);
      $("models-status").textContent = "";
      return;
    }
    const body = document.querySelector("#models tbody");
    body.replaceChildren();
    const models = answer.models || [];
    if (!models.length) {
      body.append(el("tr", {}, el("td", { colspan: 8, text: "No model yet: upload stones, then retrain (or run `appraiser train`)." })));
    }
    for (const m of models) {
      const metrics = m.metrics || {};
      const version = el("th", { scope: "row" }, `v${m.version} `);
      if (m.champion) version.append(el("span", { className: "badge", text: "Champion" }));
      let action;
      if (m.champion) {
        action = el("td", {}, el("span", { className: "hint", text: "prices now" }));
      } else {
        const button = el("button", {
          type: "button",
          className: "secondary small promote",
          "data-version": m.version,
          "aria-label": `Promote version ${m.version} to champion`,
          text: "Promote",
        });
        button.addEventListener("click", () => promote(m.version, button));
        action = el("td", {}, button);
      }
      body.append(
        el(
          "tr",
          { className: m.champion ? "champion" : null, "data-version": m.version, "aria-current": m.champion ? "true" : null },
          version,
          el("td", { text: m.model }),
          el("td", { text: fmtDate(m.created) }),
          el("td", { className: "num", text: pct(metrics.mape) }),
          el("td", { className: "num", text: pct(metrics.within_10) }),
          el("td", { className: "num", text: pct(metrics.coverage) }),
          el("td", { text: m.description || "" }),
          action
        )
      );
    }
    const champion = answer.champion ? `version ${answer.champion} is the champion` : "no champion yet";
    $("models-status").textContent = note || `${models.length} model version${models.length === 1 ? "" : "s"}; ${champion}.`;
  }

  async function promote(version, button) {
    const key = currentKey();
    if (!key) return;
    hideAlert("models-error");
    button.disabled = true;
    $("models-status").textContent = `Promoting version ${version}\u2026`;
    try {
      const answer = await api("POST", `/v1/models/${encodeURIComponent(version)}/promote`, { key });
      await loadModels(answer.message ? `${answer.message}.` : `Version ${version} is now the champion.`);
    } catch (error) {
      onKeyError(error);
      showAlert("models-error", error.message);
      $("models-status").textContent = "";
      button.disabled = false;
    }
  }

  // --- retrain ------------------------------------------------------------------------------

  let pollTimer = null;

  function describeJob(job) {
    const lines = [`status: ${job.status}`];
    if (job.started_at) lines.push(`started: ${fmtDate(job.started_at)}`);
    if (job.finished_at) lines.push(`finished: ${fmtDate(job.finished_at)}`);
    if (job.result) {
      const r = job.result;
      if (r.version !== undefined) lines.push(`trained version: ${r.version}${r.model ? ` (${r.model})` : ""}`);
      if (r.promoted !== undefined) lines.push(`promoted to champion: ${r.promoted ? "yes" : "no"}`);
      if (r.decision) lines.push(`decision: ${r.decision}`);
      if (r.seconds !== undefined) lines.push(`took: ${r.seconds} s`);
    }
    if (job.error) lines.push(`error: ${job.error}`);
    return lines.join("\n");
  }

  async function poll(url) {
    try {
      const key = storedKey(); // an admin key sees why a job failed
      const job = await api("GET", url, key ? { key } : {});
      const labels = { queued: "Queued\u2026", running: "Training\u2026 (this takes a few minutes)", succeeded: "Retrain finished.", failed: "Retrain failed." };
      $("job-status").textContent = labels[job.status] || job.status;
      $("job-detail").textContent = describeJob(job);
      if (job.status === "succeeded" || job.status === "failed") {
        pollTimer = null;
        $("retrain").disabled = false;
        if (job.status === "succeeded") await loadModels();
        return;
      }
    } catch (error) {
      $("job-status").textContent = `Could not read the job's status: ${error.message} (retrying)`;
    }
    pollTimer = setTimeout(() => poll(url), POLL_MS);
  }

  function setUpRetrain() {
    $("retrain").addEventListener("click", async () => {
      const key = currentKey();
      if (!key) return;
      hideAlert("models-error");
      const button = $("retrain");
      button.disabled = true;
      try {
        const started = await api("POST", "/v1/retrain", { key, body: {} });
        $("job").hidden = false;
        $("job-status").textContent = started.message || "Retrain started.";
        $("job-detail").textContent = `job ${started.job_id}`;
        if (pollTimer) clearTimeout(pollTimer);
        pollTimer = setTimeout(() => poll(started.status_url || `/v1/jobs/${encodeURIComponent(started.job_id)}`), POLL_MS);
      } catch (error) {
        onKeyError(error);
        showAlert("models-error", error.message);
        button.disabled = false;
      }
    });
  }

  setUpKey();
  setUpUpload();
  setUpRetrain();
  $("models-refresh").addEventListener("click", () => loadModels());
  $("review-refresh").addEventListener("click", () => loadReview({ ask: true }));
  Promise.allSettled([loadModels(), loadReview()]).finally(() => {
    document.body.dataset.ready = "true";
  });
})();
