// Shared by the appraisal page and the admin page: calling the API and building DOM nodes.
// Exposed as window.AppraiserWeb (plain scripts, no modules or build step). ES2020.
"use strict";

(() => {
  /** An API answer that is not 2xx: its status, the server's one-line `message`, its `detail`. */
  class ApiError extends Error {
    constructor(status, message, detail) {
      super(message);
      this.status = status;
      this.detail = detail;
    }
  }

  /** Call the API; resolves to the parsed JSON, rejects with an ApiError carrying the server's
   * message. `body` is sent as JSON, `form` (FormData) as multipart, `key` as a bearer token. */
  async function request(method, url, { body, form, key } = {}) {
    const headers = { Accept: "application/json" };
    const init = { method, headers };
    if (key) headers.Authorization = `Bearer ${key}`;
    if (form) init.body = form; // the browser sets the multipart boundary
    else if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(url, init);
    } catch (_) {
      throw new ApiError(0, "Could not reach the appraisal server. Check the connection and try again.");
    }
    const text = await response.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch (_) {
      data = null;
    }
    if (!response.ok) {
      const message =
        data && typeof data.message === "string" && data.message
          ? data.message
          : `The server answered ${response.status} ${response.statusText || ""}`.trim();
      throw new ApiError(response.status, message, data ? data.detail : undefined);
    }
    return data;
  }

  /** document.createElement with attributes (`text`, `className`, others as attributes). */
  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "text") node.textContent = value;
      else if (key === "className") node.className = value;
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children) node.append(child);
    return node;
  }

  window.AppraiserWeb = { ApiError, request, el };
})();
