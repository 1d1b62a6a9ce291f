// The admin page: the API key (session storage only), the review queue of experts' prices
// (approve or reject each), CSV upload with its ingestion report, the model versions with their
// metrics and a Promote button, a background retrain with its status polled every 2 s, and the
// monitoring view (GET /v1/monitoring drawn as inline SVG, the market level among it).
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

  const NEEDS_MODELS_KEY = "Enter an API key above to see the model versions.";
  let modelsRun = 0; // only the latest load draws the table

  async function loadModels(note) {
    const run = ++modelsRun;
    hideAlert("models-error");
    const body = document.querySelector("#models tbody");
    const key = $("api-key").value.trim() || storedKey(); // the list needs a staff key or above
    if (!key) {
      body.replaceChildren();
      $("models-status").textContent = NEEDS_MODELS_KEY;
      return;
    }
    $("models-status").textContent = "Loading models\u2026";
    let answer;
    try {
      answer = await api("GET", "/v1/models", { key });
    } catch (error) {
      if (run !== modelsRun) return;
      onKeyError(error);
      showAlert("models-error", error.message);
      $("models-status").textContent = "";
      return;
    }
    if (run !== modelsRun) return;
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
        if (job.status === "succeeded") await Promise.allSettled([loadModels(), loadMonitoring()]);
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

  // --- monitoring ---------------------------------------------------------------------------
  // GET /v1/monitoring drawn as inline SVG built node by node (no markup from data, no library).

  const SVG_NS = "http://www.w3.org/2000/svg";
  const MAX_DRIFT_BATCHES = 24; // the newest batches in the drift map
  const MAX_BATCH_ROWS = 10; // the newest labelled batches listed
  let monitorRun = 0;

  function svg(tag, attrs = {}, text) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (value !== null && value !== undefined) node.setAttribute(key, String(value));
    }
    if (text !== undefined) node.textContent = text;
    return node;
  }

  /** An <svg> that scales to its box, with a title and a description for screen readers. */
  function chartSvg(width, height, title, description, className) {
    const id = `mon-svg-${++chartSvg.count}`;
    const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, width, height, role: "img", "aria-labelledby": `${id}-t ${id}-d`, class: `monitor-svg ${className || ""}`.trim(), preserveAspectRatio: "xMinYMin meet" });
    root.append(svg("title", { id: `${id}-t` }, title), svg("desc", { id: `${id}-d` }, description));
    return root;
  }
  chartSvg.count = 0;

  const empty = (text) => el("p", { className: "monitor-empty", text });
  const num = (v, digits = 1) => (typeof v === "number" && Number.isFinite(v) ? v.toFixed(digits) : "\u2014");
  const ms = (v) => (typeof v === "number" && Number.isFinite(v) ? `${v < 10 ? v.toFixed(2) : v.toFixed(0)} ms` : "\u2014");
  const version = (v) => (v === null || v === undefined ? "unknown" : `v${v}`);
  const clip = (text, n) => (text.length > n ? `${text.slice(0, n - 1)}\u2026` : text);

  function hourLabel(iso) {
    const date = new Date(iso);
    return Number.isNaN(date.getTime()) ? "" : date.toLocaleString(undefined, { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
  }

  function table(caption, headers, rows, className) {
    return el(
      "div",
      { className: "table-wrap" },
      el(
        "table",
        { className: className || null },
        el("caption", { text: caption }),
        el("thead", {}, el("tr", {}, ...headers.map(([text, isNum]) => el("th", { scope: "col", className: isNum ? "num" : null, text })))),
        el("tbody", {}, ...rows)
      )
    );
  }

  // appraisals per hour: one bar per hour of the window
  function drawHours(figures) {
    const box = $("mon-hours");
    const a = figures.appraisals;
    const hours = a.per_hour || [];
    if (!a.total) {
      box.replaceChildren(empty(`No appraisals in the last ${plural(figures.hours, "hour", "hours")}.`));
      return;
    }
    const W = 1040, H = 200, left = 44, right = 8, top = 12, bottom = 30;
    const most = Math.max(1, ...hours.map((h) => h.count));
    const step = (W - left - right) / Math.max(hours.length, 1);
    const y = (v) => top + (H - top - bottom) * (1 - v / most);
    const chart = chartSvg(W, H, "Appraisals per hour", `${count(a.total)} appraisals in the last ${plural(figures.hours, "hour", "hours")}; the busiest hour had ${count(most)}.`, "hours");
    const grid = svg("g", { class: "axis", "aria-hidden": "true" });
    for (const v of [0, most / 2, most]) {
      grid.append(svg("line", { x1: left, x2: W - right, y1: y(v), y2: y(v), class: v === 0 ? "baseline" : "gridline" }));
      grid.append(svg("text", { x: left - 6, y: y(v) + 4, "text-anchor": "end" }, count(Math.round(v))));
    }
    grid.append(svg("text", { x: left, y: H - 8, "text-anchor": "start" }, hourLabel(hours[0].hour)));
    grid.append(svg("text", { x: W - right, y: H - 8, "text-anchor": "end" }, hourLabel(hours[hours.length - 1].hour)));
    chart.append(grid);
    const bars = svg("g", { class: "bars" });
    hours.forEach((h, i) => {
      if (!h.count) return;
      const bar = svg("rect", { class: "bar", x: left + i * step + step * 0.1, y: y(h.count), width: Math.max(step * 0.8, 1), height: y(0) - y(h.count), "data-hour": h.hour, "data-count": h.count });
      bar.append(svg("title", {}, `${hourLabel(h.hour)}: ${plural(h.count, "appraisal", "appraisals")}`));
      bars.append(bar);
    });
    chart.append(bars);
    const versions = (a.by_version || []).map((v) => `${version(v.version)}: ${count(v.count)}`).join(" \u00b7 ");
    box.replaceChildren(el("div", { className: "monitor-scroll" }, chart), el("p", { className: "hint", text: `${count(a.total)} in all${versions ? ` (${versions})` : ""}.` }));
  }

  // latency: the request histogram's percentiles, and the pricing time stored per stone
  function drawLatency(figures) {
    const box = $("mon-latency-body");
    const parts = [];
    const req = figures.requests;
    const appraising = req && req.appraising;
    const stat = (label, value, id) => el("div", { className: "stat", "data-stat": id }, el("dt", { text: label }), el("dd", { text: value }));
    if (appraising && appraising.count) {
      parts.push(
        el("p", { className: "hint", text: `Appraisal requests answered by this server since it started (${count(appraising.count)}):` }),
        el("dl", { className: "stats compact", id: "mon-latency-stats" }, stat("p50", ms(appraising.p50_ms), "p50"), stat("p90", ms(appraising.p90_ms), "p90"), stat("p99", ms(appraising.p99_ms), "p99"))
      );
    } else {
      parts.push(empty("No appraisal request timed by this server since it started."));
    }
    const pricing = figures.appraisals.pricing_ms;
    if (pricing && pricing.n) {
      parts.push(el("p", { className: "hint", text: `Pricing time per stone, stored with the window's appraisals (${count(pricing.n)}): p50 ${ms(pricing.p50)}, p90 ${ms(pricing.p90)}, p99 ${ms(pricing.p99)}.` }));
    }
    box.replaceChildren(...parts);
  }

  // rejected rows by reason: horizontal bars
  function drawRejected(figures) {
    const box = $("mon-rejected-body");
    const reasons = figures.rejected.by_reason || [];
    if (!reasons.length) {
      box.replaceChildren(empty(`No rows rejected in batches of the last ${plural(figures.hours, "hour", "hours")}.`));
      return;
    }
    const shown = reasons.slice(0, 8);
    const most = Math.max(...shown.map((r) => r.rows));
    const W = 460, row = 34, H = shown.length * row + 4, barMax = W - 60;
    const chart = chartSvg(W, H, "Rejected rows by reason", `${count(figures.rejected.rows)} rows rejected; most often: ${shown[0].reason} (${count(shown[0].rows)}).`, "rejected");
    shown.forEach((r, i) => {
      const g = svg("g", { class: "reason", "data-reason": r.reason });
      const width = Math.max((barMax * r.rows) / most, 2);
      g.append(svg("title", {}, `${r.reason}: ${plural(r.rows, "row", "rows")}`));
      g.append(svg("text", { x: 0, y: i * row + 12, class: "label" }, clip(r.reason, 56)));
      g.append(svg("rect", { class: "bar bad", x: 0, y: i * row + 17, width, height: 12, rx: 2 }));
      g.append(svg("text", { x: width + 6, y: i * row + 27, class: "value" }, count(r.rows)));
      chart.append(g);
    });
    const more = reasons.length > shown.length ? ` (the ${shown.length} most frequent of ${reasons.length} reasons)` : "";
    box.replaceChildren(el("div", { className: "monitor-scroll" }, chart), el("p", { className: "hint", text: `${plural(figures.rejected.rows, "row", "rows")} rejected${more}; a row may break several rules.` }));
  }

  // the champion's history: promotions and rollbacks, newest first
  function drawHistory(figures) {
    const box = $("mon-history-body");
    const moves = (figures.champion_history || []).slice().reverse();
    if (!moves.length) {
      box.replaceChildren(empty("No champion move on record yet: train a model or promote a version."));
      return;
    }
    const kinds = { gate: ["Promoted by the gate", "ok"], promote: ["Promoted by hand", ""], rollback: ["Rolled back", "warn"] };
    const rows = moves.map((m) => {
      const [label, tone] = kinds[m.kind] || [m.kind, ""];
      return el(
        "tr",
        { "data-kind": m.kind, "data-version": m.version, className: m.version === figures.champion && m === moves[0] ? "champion" : null },
        el("td", { text: fmtDate(m.at) }),
        el("td", {}, el("span", { className: `badge ${tone}`.trim(), text: label })),
        el("th", { scope: "row", text: `${version(m.version)}${m.previous ? ` (from ${version(m.previous)})` : ""}` }),
        el("td", { text: m.actor }),
        el("td", { text: m.reason })
      );
    });
    box.replaceChildren(
      el("p", { className: "hint", text: figures.champion ? `Version ${figures.champion} prices now.` : "No champion serves now." }),
      table("Every move of the champion, newest first", [["When"], ["Move"], ["Champion"], ["Who"], ["Why"]], rows, "history")
    );
  }

  // accuracy and coverage per version: bars of range coverage against the promised 90%
  function drawAccuracy(figures) {
    const box = $("mon-accuracy-body");
    const acc = figures.accuracy;
    const nominal = acc.nominal_coverage || 90;
    const versions = new Map();
    const entry = (v) => {
      const key = v === null || v === undefined ? "?" : String(v);
      if (!versions.has(key)) versions.set(key, { version: v, feedback: null, batches: null });
      return versions.get(key);
    };
    for (const f of acc.feedback || []) entry(f.version).feedback = f;
    for (const b of acc.batches_by_version || []) entry(b.version).batches = b;
    const parts = [];
    if (!versions.size) {
      parts.push(empty("No reviewed expert prices yet, and no labelled batch screened by a champion yet: approve experts' prices above, or ingest priced stones."));
      box.replaceChildren(...parts);
      return;
    }
    const list = [...versions.values()];
    const W = 1040, top = 20, rowH = 46, left = 70, right = 60, H = top + list.length * rowH + 24;
    const x = (v) => left + ((W - left - right) * Math.min(Math.max(v, 0), 100)) / 100;
    const chart = chartSvg(W, H, "Share of true prices inside the 90% range, per version", `Coverage from reviewed expert prices and from labelled batches; the ranges promise ${nominal}%.`, "accuracy");
    const axis = svg("g", { class: "axis", "aria-hidden": "true" });
    for (const v of [0, 50, 100]) {
      axis.append(svg("line", { x1: x(v), x2: x(v), y1: top - 4, y2: H - 20, class: "gridline" }));
      axis.append(svg("text", { x: x(v), y: H - 6, "text-anchor": "middle" }, `${v}%`));
    }
    chart.append(axis);
    list.forEach((item, i) => {
      const y0 = top + i * rowH;
      const g = svg("g", { class: "version", "data-version": item.version === null ? "" : item.version });
      g.append(svg("text", { x: left - 8, y: y0 + 20, "text-anchor": "end", class: "label" }, version(item.version)));
      const series = [
        ["experts", item.feedback, "expert prices"],
        ["labelled", item.batches, "labelled batches"],
      ];
      series.forEach(([kind, fig, words], j) => {
        const y = y0 + j * 17;
        if (!fig || typeof fig.coverage !== "number") {
          g.append(svg("text", { x: left + 4, y: y + 12, class: "none" }, `no ${words} yet`));
          return;
        }
        const bar = svg("rect", { class: `bar ${kind}`, x: left, y, width: Math.max(x(fig.coverage) - left, 1), height: 14, rx: 2 });
        const n = kind === "experts" ? plural(fig.n, "expert price", "expert prices") : `${plural(fig.batches, "batch", "batches")}, ${plural(fig.stones, "stone", "stones")}`;
        bar.append(svg("title", {}, `${version(item.version)}, ${words}: ${num(fig.coverage)}% inside the range, MAPE ${num(fig.mape)}% (${n})`));
        g.append(bar);
        g.append(svg("text", { x: x(fig.coverage) + 4, y: y + 12, class: "value" }, `${num(fig.coverage)}%`));
      });
      chart.append(g);
    });
    chart.append(svg("line", { x1: x(nominal), x2: x(nominal), y1: top - 8, y2: H - 20, class: "nominal" }));
    chart.append(svg("text", { x: x(nominal), y: top - 2, "text-anchor": "middle", class: "nominal-label" }, `${nominal}% promised`));
    parts.push(
      el("div", { className: "monitor-scroll" }, chart),
      el("ul", { className: "monitor-legend" }, el("li", {}, el("span", { className: "swatch experts" }), "from reviewed expert prices"), el("li", {}, el("span", { className: "swatch labelled" }), "from newly labelled batches"))
    );
    const rows = list.map((item) =>
      el(
        "tr",
        { "data-version": item.version === null ? "" : item.version },
        el("th", { scope: "row", text: version(item.version) }),
        el("td", { className: "num", text: item.feedback ? count(item.feedback.n) : "\u2014" }),
        el("td", { className: "num", text: item.feedback ? num(item.feedback.mape) : "\u2014" }),
        el("td", { className: "num", text: item.feedback ? num(item.feedback.coverage) : "\u2014" }),
        el("td", { className: "num", text: item.batches ? count(item.batches.stones) : "\u2014" }),
        el("td", { className: "num", text: item.batches ? num(item.batches.mape) : "\u2014" }),
        el("td", { className: "num", text: item.batches ? num(item.batches.coverage) : "\u2014" })
      )
    );
    parts.push(table("Per version: expert prices approved, and stones of the labelled batches it screened (held or dropped batches left out)", [["Version"], ["Expert prices", true], ["MAPE %", true], ["In range %", true], ["Batch stones", true], ["MAPE %", true], ["In range %", true]], rows, "accuracy"));
    if (!(acc.feedback || []).length) parts.push(empty("No reviewed expert prices yet."));
    if (!(acc.batches || []).length) parts.push(empty("No labelled batch screened by a champion yet."));
    const batches = (acc.batches || []).slice(-MAX_BATCH_ROWS).reverse();
    if (batches.length) {
      const batchRows = batches.map((b) =>
        el(
          "tr",
          { "data-batch": b.batch_id, className: b.held ? "flagged" : null },
          el("th", { scope: "row", text: String(b.batch_id) }),
          el("td", { text: fmtDate(b.at) }),
          el("td", { text: version(b.version) }),
          el("td", { className: "num", text: count(b.stones) }),
          el("td", { className: "num", text: num(b.mape) }),
          el("td", { className: "num", text: num(b.coverage) }),
          el("td", { className: "num", text: typeof b.bias === "number" ? `${b.bias > 0 ? "+" : ""}${num(b.bias)}` : "\u2014" }),
          el("td", { text: b.status || "" })
        )
      );
      parts.push(table(`The champion on each newly labelled batch (the newest ${batches.length})`, [["Batch"], ["Screened"], ["Champion"], ["Stones", true], ["MAPE %", true], ["In range %", true], ["Shift %", true], ["Status"]], batchRows, "batches"));
    }
    box.replaceChildren(...parts);
  }

  // drift: a heat map, features by batch, the darker the larger the effect, flagged cells outlined
  function drawDrift(figures) {
    const box = $("mon-drift-body");
    const d = figures.drift;
    const batches = (d.batches || []).slice(-MAX_DRIFT_BATCHES);
    if (!batches.length) {
      box.replaceChildren(empty("No drift figures yet: each batch ingested while a champion serves is compared with the stones it learned from."));
      return;
    }
    const features = d.features || [];
    const cellW = 34, cellH = 22, left = 64, top = 26;
    const W = left + batches.length * cellW + 8, H = top + features.length * cellH + 6;
    const flagged = batches.reduce((n, b) => n + Object.values(b.features).filter((f) => f.drift).length, 0);
    const chart = chartSvg(W, H, "Drift per feature, batch by batch", `${batches.length} batches; ${flagged} feature${flagged === 1 ? "" : "s"} flagged as drifting. Darker cells moved further from the training stones.`, "drift");
    batches.forEach((b, j) => {
      chart.append(svg("text", { x: left + j * cellW + cellW / 2, y: top - 8, "text-anchor": "middle", class: "col-label" }, `#${b.batch_id}`));
    });
    features.forEach((feature, i) => {
      const row = svg("g", { class: "feature", "data-feature": feature });
      row.append(svg("text", { x: left - 6, y: top + i * cellH + 15, "text-anchor": "end", class: "label" }, feature));
      batches.forEach((b, j) => {
        const f = b.features[feature];
        if (!f) return;
        const effect = typeof f.effect === "number" ? f.effect : 0;
        const cls = `cell${f.drift ? " drift" : ""}${b.judged ? "" : " unjudged"}`;
        const cell_ = svg("rect", { class: cls, x: left + j * cellW + 1, y: top + i * cellH + 1, width: cellW - 2, height: cellH - 2, rx: 2, "fill-opacity": (0.08 + 0.92 * Math.min(effect / 0.3, 1)).toFixed(3), "data-batch": b.batch_id });
        const test = f.test === "KS" ? "KS statistic" : "total variation distance";
        cell_.append(svg("title", {}, `batch ${b.batch_id}, ${feature}: ${test} ${num(effect, 3)}${typeof f.p_value === "number" ? `, p = ${f.p_value.toPrecision(2)}` : ""}${f.drift ? " \u2014 drifts" : ""}${b.judged ? "" : " (too few stones to judge)"}`));
        row.append(cell_);
      });
      chart.append(row);
    });
    const thresholds = d.thresholds || {};
    box.replaceChildren(
      el("div", { className: "monitor-scroll" }, chart),
      el("p", { className: "hint", text: `Each cell: how far a batch's feature moved from the champion's training stones (KS statistic for numbers, total variation distance for grades; darker is further). Outlined: significant and over ${thresholds.numbers ?? 0.1} (numbers) or ${thresholds.grades ?? 0.1} (grades). Pale cells with a dashed edge: batches too small to judge.` })
    );
  }

  const monthLabel = (iso) => {
    const date = new Date(`${iso}T00:00:00Z`);
    return Number.isNaN(date.getTime()) ? String(iso) : date.toLocaleDateString(undefined, { month: "short", year: "numeric", timeZone: "UTC" });
  };

  // the market level per month: the level as a line through its 90% interval (a band), the
  // base level (1.0, the prices the champion learned) dashed
  function drawMarket(figures) {
    const box = $("mon-market-body");
    const market = figures.market;
    const months = (market && market.series) || [];
    if (!months.length) {
      box.replaceChildren(empty("No market level estimated yet: prices stand on the base level (1.00), the prices the champion learned."));
      return;
    }
    const W = 1040, H = 240, left = 56, right = 20, top = 16, bottom = 30;
    // the axis on round levels (0.02, 0.05, 0.1... apart), the base level always on it
    const raw = Math.max(Math.max(1, ...months.map((m) => m.high)) - Math.min(1, ...months.map((m) => m.low)), 0.02) / 4;
    const power = 10 ** Math.floor(Math.log10(raw));
    const step = [1, 2, 2.5, 5, 10].map((k) => k * power).find((v) => v >= raw);
    const lo = Math.floor(Math.min(1, ...months.map((m) => m.low)) / step) * step;
    const hi = Math.max(Math.ceil(Math.max(1, ...months.map((m) => m.high)) / step) * step, lo + step);
    const n = months.length;
    const x = (i) => (n === 1 ? (left + W - right) / 2 : left + (i * (W - left - right)) / (n - 1));
    const y = (v) => top + ((hi - v) / (hi - lo)) * (H - top - bottom);
    const now = market.current;
    const chart = chartSvg(W, H, "Market level per month, with its 90% interval", `${plural(n, "month", "months")}; the level today is ${num(now.level, 3)} (90% interval ${num(now.low, 3)} to ${num(now.high, 3)}); 1.00 is the base level.`, "market");
    const axis = svg("g", { class: "axis", "aria-hidden": "true" });
    for (let t = 0; t <= Math.round((hi - lo) / step); t += 1) {
      const v = lo + t * step;
      axis.append(svg("line", { x1: left, x2: W - right, y1: y(v), y2: y(v), class: "gridline" }));
      axis.append(svg("text", { x: left - 6, y: y(v) + 4, "text-anchor": "end" }, v.toFixed(2)));
    }
    const every = Math.max(1, Math.ceil(n / 12));
    months.forEach((m, i) => {
      if (i % every === 0 || i === n - 1) axis.append(svg("text", { x: x(i), y: H - 8, "text-anchor": n === 1 ? "middle" : i === 0 ? "start" : i === n - 1 ? "end" : "middle" }, monthLabel(m.month)));
    });
    chart.append(axis);
    const upper = months.map((m, i) => `${x(i)},${y(m.high)}`);
    const lower = months.map((m, i) => `${x(i)},${y(m.low)}`).reverse();
    chart.append(svg("polygon", { class: "band", points: [...upper, ...lower].join(" "), "data-kind": "interval" }));
    chart.append(svg("line", { x1: left, x2: W - right, y1: y(1), y2: y(1), class: "nominal" }));
    chart.append(svg("text", { x: W - right, y: y(1) - 4, "text-anchor": "end", class: "nominal-label" }, "base level 1.00"));
    chart.append(svg("polyline", { class: "level", points: months.map((m, i) => `${x(i)},${y(m.level)}`).join(" ") }));
    const points = svg("g", { class: "points" });
    months.forEach((m, i) => {
      const point = svg("circle", { class: m.stones ? "point" : "point carried", cx: x(i), cy: y(m.level), r: 4, "data-month": m.month, "data-level": m.level, "data-low": m.low, "data-high": m.high });
      const left_ = m.excluded ? `; ${plural(m.excluded, "stone", "stones")} left out` : "";
      point.append(svg("title", {}, `${monthLabel(m.month)}: level ${num(m.level, 3)} (90% ${num(m.low, 3)} to ${num(m.high, 3)}), ${m.stones ? plural(m.stones, "stone", "stones") : "no stones: carried forward"}${left_}`));
      points.append(point);
    });
    chart.append(points);
    const gone = (market.excluded || []).map((e) => `${monthLabel(e.month)}: ${e.source} left out (${plural(e.stones, "stone", "stones")} at ${num(e.level, 3)}; the others ${num(e.market, 3)})`);
    const said = now.month ? `Today's prices stand on level ${num(now.level, 3)} (90% interval ${num(now.low, 3)} to ${num(now.high, 3)}), the estimate of ${monthLabel(now.month)}.` : "Today's prices stand on the base level (1.00).";
    box.replaceChildren(
      el("div", { className: "monitor-scroll" }, chart),
      el("ul", { className: "monitor-legend" }, el("li", {}, el("span", { className: "swatch level" }), "level (prices over the champion's on the base level)"), el("li", {}, el("span", { className: "swatch band" }), "its 90% interval")),
      el("p", { className: "hint", id: "mon-market-now", text: said }),
      ...gone.map((text) => el("p", { className: "hint", text }))
    );
  }

  // held batches: release or drop each
  function drawHeld(figures) {
    const box = $("mon-held-body");
    const held = figures.held_batches || [];
    if (!held.length) {
      box.replaceChildren(empty("No batch waits for review."));
      return;
    }
    const rows = held.map((b) => {
      const release = el("button", { type: "button", className: "small", "aria-label": `Release batch ${b.batch_id}`, text: "Release" });
      const drop = el("button", { type: "button", className: "secondary small", "aria-label": `Drop batch ${b.batch_id}`, text: "Drop" });
      const row = el(
        "tr",
        { "data-batch": b.batch_id },
        el("th", { scope: "row", text: String(b.batch_id) }),
        el("td", { text: fmtDate(b.received_at) }),
        el("td", {}, el("span", { text: b.source }), el("span", { className: "hint block", text: clip(b.file_name, 80), title: b.file_name })),
        el("td", { className: "num", text: count(b.rows_accepted) }),
        el("td", { className: "held-why", text: b.summary || b.reason || "" }),
        el("td", { className: "verdict" }, el("span", { className: "actions" }, release, drop))
      );
      release.addEventListener("click", () => setBatch(b.batch_id, "release", row));
      drop.addEventListener("click", () => setBatch(b.batch_id, "drop", row));
      return row;
    });
    box.replaceChildren(table(`${plural(held.length, "batch waits", "batches wait")} for review: held batches train nothing until released`, [["Batch"], ["Received"], ["Source"], ["Stones", true], ["Why held"], ["Review"]], rows, "held"));
  }

  async function setBatch(id, action, row) {
    const key = currentKey();
    if (!key) return;
    hideAlert("monitor-error");
    for (const b of row.querySelectorAll("button")) b.disabled = true;
    try {
      await api("POST", `/v1/batches/${encodeURIComponent(id)}/${action}`, { key });
      await loadMonitoring(`Batch ${id} ${action === "release" ? "released: its stones train the next retrain" : "dropped: kept, never used"}.`);
    } catch (error) {
      onKeyError(error);
      showAlert("monitor-error", error.message);
      for (const b of row.querySelectorAll("button")) b.disabled = false;
    }
  }

  const NEEDS_MONITOR_KEY = "Enter an admin API key above to see the monitoring figures.";

  async function loadMonitoring(note) {
    const key = $("api-key").value.trim() || storedKey();
    const run = ++monitorRun;
    hideAlert("monitor-error");
    if (!key) {
      $("monitor-body").hidden = true;
      $("monitor-status").textContent = NEEDS_MONITOR_KEY;
      return;
    }
    const hours = Number($("monitor-hours").value) || 24;
    $("monitor-status").textContent = "Loading the monitoring figures\u2026";
    let figures;
    try {
      figures = await api("GET", `/v1/monitoring?hours=${encodeURIComponent(hours)}`, { key });
    } catch (error) {
      if (run !== monitorRun) return;
      onKeyError(error);
      $("monitor-body").hidden = true;
      showAlert("monitor-error", error.message);
      $("monitor-status").textContent = "The monitoring figures could not be loaded.";
      return;
    }
    if (run !== monitorRun) return;
    for (const draw of [drawHours, drawLatency, drawRejected, drawHistory, drawAccuracy, drawDrift, drawMarket, drawHeld]) draw(figures);
    $("monitor-body").hidden = false;
    $("monitor-body").dataset.generated = figures.generated_at;
    $("monitor-status").textContent = note || `Figures as of ${fmtDate(figures.generated_at)}.`;
  }

  function setUpMonitoring() {
    $("monitor-refresh").addEventListener("click", () => {
      if (currentKey()) loadMonitoring();
    });
    $("monitor-hours").addEventListener("change", () => loadMonitoring());
    $("key-form").addEventListener("submit", () => loadMonitoring());
    $("key-forget").addEventListener("click", () => loadMonitoring());
  }

  setUpKey();
  setUpUpload();
  setUpRetrain();
  setUpMonitoring();
  $("models-refresh").addEventListener("click", () => loadModels());
  $("key-form").addEventListener("submit", () => loadModels());
  $("key-forget").addEventListener("click", () => loadModels());
  $("review-refresh").addEventListener("click", () => loadReview({ ask: true }));
  Promise.allSettled([loadModels(), loadReview(), loadMonitoring()]).finally(() => {
    document.body.dataset.ready = "true";
  });
})();
