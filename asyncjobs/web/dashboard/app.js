/* asyncjobs dashboard: one page, three hash routes, live through server-sent events.
 *
 *   #/?status=&class=&id=   overview: status cards, throughput chart, workers, hosts, jobs table
 *   #/jobs/17               one job: data, error and traceback, output, attempt timeline
 *   #/logs?file=jobs|errors tails of jobs.log and jobs_errors.log
 *
 * The file reads top to bottom:
 *   1. helpers  - building DOM (text only ever goes in through text nodes, never innerHTML)
 *                 and formatting times, durations and numbers
 *   2. api      - the one place that talks to the host (JSON API only, SPEC §5)
 *   3. state    - what the page currently knows
 *   4. render   - state -> DOM, one function per part of the page
 *   5. loaders  - fetch -> state -> render, throttled to at most one request per second each
 *   6. live     - the /api/events stream: what each event refreshes, reconnects
 *   7. actions, router, boot
 */
"use strict";

(function () {
  const STATUSES = ["pending", "running", "completed", "failed", "cancelled"];
  const CANCELLABLE = new Set(["pending", "running"]);
  const RETRYABLE = new Set(["failed", "cancelled"]);
  const PAGE_SIZE = 25;
  const REFETCH_INTERVAL = 1000; // ms: at most one refetch per second per resource
  const LOG_REFETCH_INTERVAL = 2000;
  const STATS_FALLBACK = 30000; // ms: "last minute" numbers age even when nothing happens
  const CLOCK_TICK = 5000; // ms: relative times ("3 min ago") are re-rendered this often
  const RECONNECT_MAX = 30000;

  // ---- 1. helpers ----------------------------------------------------------------------

  const $ = (selector, root = document) => root.querySelector(selector);

  /** el("a", {href: "#/", class: "x"}, "text", child): children are Nodes or plain text. */
  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    setProps(node, props);
    node.append(...flatten(children));
    return node;
  }

  function svgEl(tag, props, ...children) {
    const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
    setProps(node, props);
    node.append(...flatten(children));
    return node;
  }

  function setProps(node, props) {
    for (const [key, value] of Object.entries(props || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      // CSSOM, not the style attribute: the Content-Security-Policy refuses inline styles.
      else if (key === "style") node.style.cssText = String(value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
  }

  /** Replace a node's children; null/false children are skipped, strings become text. */
  function fill(node, ...children) {
    node.replaceChildren(...flatten(children));
    return node;
  }

  function flatten(children) {
    return children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false)
      .map((c) => (c instanceof Node ? c : String(c)));
  }

  const numberFormat = new Intl.NumberFormat();
  const fmtInt = (n) => numberFormat.format(n);

  function fmtDuration(ms) {
    if (ms === null || ms === undefined || !isFinite(ms)) return "–";
    if (ms < 1000) return `${Math.max(0, Math.round(ms))} ms`;
    const s = ms / 1000;
    if (s < 60) return `${s.toFixed(s < 10 ? 2 : 1)} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${String(Math.floor(s % 60)).padStart(2, "0")} s`;
    return `${Math.floor(s / 3600)} h ${String(Math.floor((s % 3600) / 60)).padStart(2, "0")} min`;
  }

  function fmtRelative(iso) {
    const seconds = Math.round((Date.now() - Date.parse(iso)) / 1000);
    const a = Math.abs(seconds);
    if (a < 3) return "just now";
    let text;
    if (a < 60) text = `${a} s`;
    else if (a < 3600) text = `${Math.floor(a / 60)} min`;
    else if (a < 86400) text = `${Math.floor(a / 3600)} h`;
    else text = `${Math.floor(a / 86400)} d`;
    return seconds < 0 ? `in ${text}` : `${text} ago`;
  }

  const fmtLocal = (iso) => new Date(iso).toLocaleString();
  const fmtMinute = (iso) => new Date(iso).toLocaleTimeString([], {hour: "2-digit", minute: "2-digit"});
  const between = (start, end) => (start && end ? Date.parse(end) - Date.parse(start) : null);

  /** A <time> that the clock tick keeps current: "3 min ago", or elapsed since start. */
  function timeAgo(iso) {
    if (!iso) return el("span", {class: "muted"}, "–");
    return el("time", {datetime: iso, title: fmtLocal(iso), "data-rel": ""}, fmtRelative(iso));
  }

  function elapsedSince(iso) {
    return el("time", {datetime: iso, title: `started ${fmtLocal(iso)}`, "data-elapsed": ""},
      fmtDuration(Date.now() - Date.parse(iso)));
  }

  function tickClock() {
    for (const node of document.querySelectorAll("time[data-rel]")) {
      node.textContent = fmtRelative(node.getAttribute("datetime"));
    }
    for (const node of document.querySelectorAll("time[data-elapsed]")) {
      node.textContent = fmtDuration(Date.now() - Date.parse(node.getAttribute("datetime")));
    }
  }

  /** JSON for people: one line when short, indented when not. */
  function pretty(value) {
    const line = JSON.stringify(value);
    return line.length <= 72 ? line : JSON.stringify(value, null, 2);
  }

  /** SampleJob.process("a", "b", key=1): how a job reads in one line. */
  function callPreview(job, limit = 80) {
    const parts = job.args.map((a) => JSON.stringify(a));
    for (const [k, v] of Object.entries(job.kwargs || {})) parts.push(`${k}=${JSON.stringify(v)}`);
    const text = `(${parts.join(", ")})`;
    return text.length > limit ? `${text.slice(0, limit - 1)}…` : text;
  }

  /** Calls fn at most once per `interval` ms; calls in between collapse into one trailing call. */
  function throttle(fn, interval) {
    let timer = null;
    let last = 0;
    return function schedule() {
      if (timer !== null) return;
      const wait = Math.max(0, last + interval - Date.now());
      timer = setTimeout(() => {
        timer = null;
        last = Date.now();
        fn();
      }, wait);
    };
  }

  // ---- 2. api: the only code that talks to the host ------------------------------------

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }

    get readable() {
      return this.status ? `${this.message} (HTTP ${this.status} ${this.code})` : this.message;
    }
  }

  /* The sign-in page (login.js) keeps the session token in sessionStorage, which belongs to
   * this origin only (scheme, host and port): unlike a cookie, no other port of this host
   * ever receives it.  It goes out as a header; the event stream gets a one-use ticket. */
  const SESSION_KEY = "asyncjobs.session";
  const session = () => sessionStorage.getItem(SESSION_KEY);

  const api = {
    async request(method, path) {
      let response;
      try {
        response = await fetch(path, {method, credentials: "omit", cache: "no-store",
          headers: {Accept: "application/json", Authorization: `Bearer ${session()}`}});
      } catch (err) {
        throw new ApiError(0, "unreachable",
          "The host is not reachable. Is `asyncjobs serve` still running?");
      }
      const body = await response.json().catch(() => null);
      if (response.ok) return body;
      const error = (body && body.error) || {};
      if (response.status === 401) signedOut();
      throw new ApiError(response.status, error.code || "error",
        error.message || response.statusText || "request failed");
    },
    stats: () => api.request("GET", "/api/stats"),
    hosts: () => api.request("GET", "/api/hosts"),
    jobs({status, cls, cursor, chain}) {
      const query = new URLSearchParams({limit: String(PAGE_SIZE)});
      if (chain) query.set("chain", String(chain));
      if (status) query.set("status", status);
      if (cls) query.set("class", cls);
      if (cursor) query.set("cursor", cursor);
      return api.request("GET", `/api/jobs?${query}`);
    },
    job: (id) => api.request("GET", `/api/jobs/${encodeURIComponent(id)}`),
    cancel: (id) => api.request("POST", `/api/jobs/${encodeURIComponent(id)}/cancel`),
    retry: (id) => api.request("POST", `/api/jobs/${encodeURIComponent(id)}/retry`),
    logs: (file, lines) => api.request("GET", `/api/logs?file=${file}&lines=${lines}`),
    async events() {
      const {ticket} = await api.request("POST", "/api/events/tickets");
      return new EventSource(`/api/events?ticket=${encodeURIComponent(ticket)}`);
    },
  };

  // ---- 3. state ------------------------------------------------------------------------

  const state = {
    route: {view: "overview"},
    stats: null,
    classes: new Set(), // every class seen in stats, for the class filter
    list: {key: "", cursors: [null], page: 0, jobs: [], next: null, missing: null},
    job: null, // the job page's record, with attempt_history
    chain: [], // the steps of the job page's chain, first step first
    jobMissing: null, // the job page's error, if the job could not be loaded
    logs: {file: "jobs", lines: 200, text: []},
    progress: new Map(), // job id -> live {fraction, message} from progress events
    busy: new Map(), // job id -> "cancel" | "retry" while the request is in flight
    signedOut: false,
  };

  // ---- 4. render -----------------------------------------------------------------------

  function statusBadge(status) {
    return el("span", {class: "badge", "data-status": status},
      el("span", {class: "icon", "aria-hidden": "true"}), status);
  }

  function progressBar(progress, {large = false} = {}) {
    const fraction = Math.min(1, Math.max(0, progress ? progress.fraction : 0));
    const percent = Math.round(fraction * 100);
    const message = progress && progress.message ? progress.message : "";
    return el("div", {class: large ? "progress large" : "progress", title: message || null},
      el("div", {class: "bar", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100,
        "aria-valuenow": percent, "aria-label": "progress"},
      el("span", {style: `width: ${percent}%`})),
      el("span", {class: "progress-text"}, `${percent}%`),
      large && message ? el("span", {class: "progress-message"}, message) : null);
  }

  function renderStats() {
    const stats = state.stats;
    if (!stats) return;
    for (const status of STATUSES) {
      const card = $(`.card[data-status="${status}"]`);
      $("[data-count]", card).textContent = fmtInt(stats.counts[status] || 0);
    }
    $("#tp-minute").textContent = fmtInt(stats.throughput.last_minute);
    $("#tp-hour").textContent = fmtInt(stats.throughput.last_hour);
    $("#workers-running").textContent = fmtInt(stats.workers.running);
    $("#workers-max").textContent = fmtInt(stats.workers.max);
    const busy = stats.workers.max ? stats.workers.running / stats.workers.max : 0;
    $("#workers-meter").style.width = `${Math.min(100, busy * 100)}%`;
    $("#uptime").textContent = fmtDuration(stats.uptime * 1000);
    renderChart(stats.throughput.per_minute);
    for (const cls of Object.keys(stats.classes)) state.classes.add(cls);
    renderClassOptions();
  }

  /** Stacked bars per minute (completed below, the rest above), oldest on the left. */
  function renderChart(perMinute) {
    const slot = 600 / Math.max(1, perMinute.length);
    const peak = Math.max(0, ...perMinute.map((m) => m.completed + m.failed));
    const scale = (n) => (n ? Math.max(1.5, (n / Math.max(1, peak)) * 96) : 0);
    const bars = perMinute.map((m, i) => {
      const ok = scale(m.completed);
      const bad = scale(m.failed);
      const x = i * slot;
      return svgEl("g", null,
        svgEl("title", null, `${fmtMinute(m.minute)}: ${m.completed} completed, ${m.failed} other`),
        svgEl("rect", {class: "bar-hit", x, y: 0, width: slot, height: 100}),
        ok ? svgEl("rect", {class: "bar-completed", x: x + 1, y: 100 - ok, width: slot - 2, height: ok}) : null,
        bad ? svgEl("rect", {class: "bar-failed", x: x + 1, y: 100 - ok - bad, width: slot - 2, height: bad}) : null);
    });
    fill($("#chart"), bars);
    $("#chart-max").textContent = peak ? `${fmtInt(peak)}/min` : "";
    $("#chart-empty").hidden = peak > 0;
  }

  function renderClassOptions() {
    const select = $("#filter-class");
    const wanted = state.route.cls || "";
    if (wanted) state.classes.add(wanted);
    const names = [...state.classes].sort();
    const current = [...select.options].slice(1).map((o) => o.value);
    if (current.join("\n") !== names.join("\n")) {
      fill(select, el("option", {value: ""}, "all"),
        names.map((name) => el("option", {value: name}, name)));
    }
    select.value = wanted;
  }

  function renderFilters() {
    const {status = "", cls = "", id = ""} = state.route;
    $("#filter-status").value = status;
    renderClassOptions();
    if (document.activeElement !== $("#search-id")) $("#search-id").value = id;
    $("#clear-filters").hidden = !(status || cls || id);
    for (const card of document.querySelectorAll(".card")) {
      card.setAttribute("aria-pressed", String(card.dataset.status === status));
    }
  }

  // Rows are kept per job id and rebuilt only when what they show changed, so a live
  // update does not steal focus from, or re-create under the pointer, an unchanged button.
  const rowCache = new Map(); // id -> {tr, signature}

  function renderJobs() {
    const body = $("#jobs-body");
    const {jobs, missing, page, next} = state.list;
    $("#page-newer").disabled = page === 0;
    $("#page-older").disabled = !next;
    $("#page-label").textContent = state.route.id ? "" : `page ${page + 1}`;
    if (!jobs.length) {
      rowCache.clear();
      fill(body, emptyRow(missing));
      return;
    }
    const rows = jobs.map(jobRow);
    const keep = new Set(jobs.map((j) => j.id));
    for (const id of rowCache.keys()) if (!keep.has(id)) rowCache.delete(id);
    syncChildren(body, rows);
    tickClock(); // rows rebuilt at different moments: put every "… ago" on the same instant
  }

  function emptyRow(missing) {
    const filtered = state.route.status || state.route.cls;
    const text = missing || (filtered ? "No jobs match these filters."
      : "No jobs yet. Submit one with: asyncjobs submit SampleJob process \"a,b\"");
    return el("tr", {class: "empty"}, el("td", {colspan: 9}, text));
  }

  /** Put `nodes` in `parent` in this order, moving only what is out of place. */
  function syncChildren(parent, nodes) {
    nodes.forEach((node, i) => {
      if (parent.children[i] !== node) parent.insertBefore(node, parent.children[i] || null);
    });
    while (parent.children.length > nodes.length) parent.lastElementChild.remove();
  }

  function jobRow(job) {
    const progress = state.progress.get(job.id) || job.progress;
    const signature = JSON.stringify([job, progress, state.busy.get(job.id) || null]);
    let entry = rowCache.get(job.id);
    if (!entry) {
      entry = {tr: el("tr"), signature: ""};
      rowCache.set(job.id, entry);
    }
    if (entry.signature !== signature) {
      entry.signature = signature;
      entry.tr.dataset.jobId = job.id;
      entry.tr.dataset.status = job.status;
      fill(entry.tr, jobCells(job, progress));
    }
    return entry.tr;
  }

  function jobCells(job, progress) {
    const href = `#/jobs/${job.id}`;
    return [
      el("td", {class: "num", "data-col": "id"}, el("a", {href}, String(job.id))),
      el("td", {class: "job-cell", "data-col": "job"},
        el("a", {href, class: "job-name"}, `${job.class}.${job.method}`),
        el("span", {class: "args"}, callPreview(job))),
      el("td", {"data-col": "status"}, statusBadge(job.status), pendingNote(job)),
      el("td", {class: "opt", "data-col": "priority"},
        el("span", {class: `priority priority-${job.priority}`}, job.priority)),
      el("td", {class: "num opt", "data-col": "attempts"}, `${job.attempts} / ${job.max_attempts}`),
      el("td", {"data-col": "progress"}, job.status === "running" && progress ? progressBar(progress)
        : el("span", {class: "muted"}, "–")),
      el("td", {class: "opt", "data-col": "created"}, timeAgo(job.created_at)),
      el("td", {class: "num opt", "data-col": "duration"}, jobDuration(job)),
      el("td", {class: "row-actions", "data-col": "actions"}, actionButtons(job)),
    ];
  }

  function pendingNote(job) {
    if (job.status !== "pending") return null;
    if (!job.run_at) return el("span", {class: "note"}, "after the previous step");
    if (Date.parse(job.run_at) > Date.now() + 1000) {
      return el("span", {class: "note"}, job.attempts ? "retry " : "due ", timeAgo(job.run_at));
    }
    return null;
  }

  function jobDuration(job) {
    if (job.status === "running" && job.started_at) return elapsedSince(job.started_at);
    if (job.finished_at && job.started_at) return fmtDuration(between(job.started_at, job.finished_at));
    return el("span", {class: "muted"}, "–");
  }

  function actionButtons(job) {
    const busy = state.busy.get(job.id);
    const buttons = [];
    if (CANCELLABLE.has(job.status)) {
      buttons.push(el("button", {type: "button", class: "danger", "data-action": "cancel",
        "data-id": job.id, "aria-label": `Cancel job ${job.id}`, disabled: Boolean(busy)},
      busy === "cancel" ? "Cancelling…" : "Cancel"));
    }
    if (RETRYABLE.has(job.status)) {
      buttons.push(el("button", {type: "button", "data-action": "retry", "data-id": job.id,
        "aria-label": `Retry job ${job.id}`, disabled: Boolean(busy)},
      busy === "retry" ? "Retrying…" : "Retry"));
    }
    return buttons;
  }

  // -- the job page

  function renderJobPage() {
    const view = $("#view-job");
    const job = state.job;
    if (!job || job.id !== state.route.id) {
      fill(view, backLink(), el("h1", null, `Job ${state.route.id}`),
        el("p", {class: "muted"}, state.jobMissing || "Loading…"));
      return;
    }
    const open = new Set([...view.querySelectorAll("details[open]")].map((d) => d.dataset.key));
    document.title = `Job ${job.id} · ${job.status} · asyncjobs`;
    fill(view,
      backLink(),
      el("div", {class: "job-head"},
        el("h1", null, `Job ${job.id} `, el("span", {class: "job-name"}, `${job.class}.${job.method}`)),
        statusBadge(job.status),
        el("div", {class: "actions"}, actionButtons(job))),
      factsStrip(job),
      job.status === "running" ? el("section", {class: "panel", id: "job-progress"}, progressContent(job)) : null,
      errorPanel(job),
      chainPanel(job),
      el("div", {class: "job-grid"}, timelinePanel(job), dataPanel(job)),
      outputPanel(job));
    for (const details of view.querySelectorAll("details")) {
      if (open.has(details.dataset.key)) details.open = true;
    }
  }

  const backLink = () => el("a", {href: "#/", class: "back"}, "← All jobs");

  function lastAttemptWith(job, test) {
    return [...job.attempt_history].reverse().find(test) || null;
  }

  function errorPanel(job) {
    if (!job.error) return null;
    const attempt = lastAttemptWith(job, (a) => a.error && a.error.traceback);
    return el("section", {class: "panel error-panel", id: "job-error"},
      el("h2", null, "Error"),
      el("p", {class: "error-line"}, el("strong", null, job.error.type), ": ", job.error.message),
      attempt ? [el("h3", null, `Traceback (attempt ${attempt.number})`),
        el("pre", {class: "code traceback"}, attempt.error.traceback)] : null);
  }

  /** The job's numbers and times in one compact strip under its title. */
  function factsStrip(job) {
    const runs = job.attempt_history.length;
    const facts = [
      ["Priority", el("span", {class: `priority priority-${job.priority}`}, job.priority)],
      ["Attempts", `${job.attempts} of ${job.max_attempts}`,
        runs > job.attempts ? `${runs} runs in all` : null],
      ["Timeout", fmtDuration(job.timeout * 1000)],
      ["Created", timeAgo(job.created_at), localTime(job.created_at)],
      ["Run at", job.run_at ? timeAgo(job.run_at) : "after the previous step", localTime(job.run_at)],
      ["Started", timeAgo(job.started_at), localTime(job.started_at)],
      ["Finished", timeAgo(job.finished_at), localTime(job.finished_at)],
      ["Duration", jobDuration(job)],
    ];
    if (job.chain_id !== null) facts.push(["Chain", chainLink(job)]);
    if (job.unique_key) facts.push(["Unique key", el("code", null, job.unique_key)]);
    return el("dl", {class: "panel facts", id: "job-facts"}, facts.map(([term, value, note]) =>
      el("div", null, el("dt", null, term), el("dd", null, value),
        note ? el("dd", {class: "muted small"}, note) : null)));
  }

  /** Local wall-clock time: just the time for today, date and time otherwise. */
  function localTime(iso) {
    if (!iso) return null;
    const date = new Date(iso);
    return date.toDateString() === new Date().toDateString()
      ? date.toLocaleTimeString() : date.toLocaleString();
  }

  /** The whole chain, step by step, when this job is part of one. */
  function chainPanel(job) {
    if (job.chain_id === null || state.chain.length === 0) return null;
    const steps = state.chain.map((step, i) => el("li", {class: "chain-step"},
      el("span", {class: "num"}, `${i + 1}.`),
      step.id === job.id
        ? el("strong", null, `${step.class}.${step.method}`)
        : el("a", {href: `#/jobs/${step.id}`}, `${step.class}.${step.method}`),
      el("span", {class: "muted"}, ` job ${step.id} `),
      statusBadge(step.status)));
    return el("section", {class: "panel", id: "job-chain"},
      el("h2", null, "Chain ", el("span", {class: "muted"}, `(${state.chain.length} steps)`)),
      el("ol", {class: "chain-steps"}, steps));
  }

  function chainLink(job) {
    if (job.chain_id === job.id) return "this job is its first step";
    return ["step of the chain started by ",
      el("a", {href: `#/jobs/${job.chain_id}`, class: "chain-link"}, `job ${job.chain_id}`)];
  }

  function dataPanel(job) {
    const block = (title, value, empty) => [el("h3", null, title),
      empty ? el("p", {class: "muted"}, empty) : el("pre", {class: "code"}, pretty(value))];
    const noResult = {pending: "none yet", running: "none yet"}[job.status] ||
      `none: the job ended ${job.status}`;
    return el("section", {class: "panel", id: "job-data"}, el("h2", null, "Data"),
      block("Args", job.args, job.args.length ? null : "none"),
      block("Kwargs", job.kwargs, Object.keys(job.kwargs).length ? null : "none"),
      block("Result", job.result, job.status === "completed" ? null : noResult));
  }

  function timelinePanel(job) {
    const attempts = job.attempt_history;
    return el("section", {class: "panel", id: "job-attempts"},
      el("h2", null, `Attempts `, el("span", {class: "muted"}, `(${attempts.length})`)),
      attempts.length ? el("ol", {class: "timeline"}, attempts.map(attemptItem))
        : el("p", {class: "muted"}, "Not started yet."));
  }

  function attemptItem(attempt) {
    const err = attempt.error;
    const extra = [];
    if (err && err.traceback) {
      extra.push(el("details", {"data-key": `tb-${attempt.number}`}, el("summary", null, "Traceback"),
        el("pre", {class: "code traceback"}, err.traceback)));
    }
    if (attempt.output) {
      extra.push(el("details", {"data-key": `out-${attempt.number}`}, el("summary", null, "Output"),
        el("pre", {class: "code"}, attempt.output)));
    }
    return el("li", {"data-outcome": attempt.outcome, "data-number": attempt.number},
      el("div", {class: "attempt-row"},
        el("span", {class: "attempt-number", title: attempt.host ? `ran on host ${attempt.host}` : ""},
          `#${attempt.number}`),
        statusBadge(attempt.outcome),
        el("span", {class: "attempt-started"}, timeAgo(attempt.started_at)),
        el("span", {class: "num attempt-duration", title: "duration"},
          attempt.finished_at ? fmtDuration(between(attempt.started_at, attempt.finished_at))
            : elapsedSince(attempt.started_at)),
        el("span", {class: "num attempt-exit", title: "worker exit code"},
          attempt.exit_code === null ? "" : `exit ${attempt.exit_code}`),
        el("span", {class: "attempt-host"}, attempt.host ? ["on ", hostId(attempt.host)] : ""),
        el("span", {class: "attempt-error"}, err ? `${err.type}: ${err.message}` : "")),
      extra);
  }

  function outputPanel(job) {
    const attempt = lastAttemptWith(job, (a) => a.output) || null;
    return el("section", {class: "panel", id: "job-output"},
      el("h2", null, "Captured output", attempt ? el("span", {class: "muted"}, ` (attempt ${attempt.number})`) : null),
      attempt ? el("pre", {class: "code"}, attempt.output)
        : el("p", {class: "muted"}, "Nothing printed to stdout or stderr."));
  }

  function progressContent(job) {
    const progress = state.progress.get(job.id) || job.progress;
    return [el("h2", null, "Progress"), progress ? progressBar(progress, {large: true})
      : el("p", {class: "muted"}, "Running; this job has not reported progress (asyncjobs.progress()).")];
  }

  /** A progress event for the job on screen: move its bar without refetching. */
  function renderJobProgress() {
    const box = $("#job-progress");
    if (box && state.job) fill(box, progressContent(state.job));
  }

  // -- logs

  function renderLogs() {
    const {file, lines, text} = state.logs;
    for (const tab of document.querySelectorAll(".tab")) {
      tab.setAttribute("aria-current", String(tab.dataset.file === file));
    }
    $("#log-caption").textContent = `Last ${text.length} of at most ${lines} lines of ` +
      `${file === "jobs" ? "jobs.log" : "jobs_errors.log"}, oldest first.`;
    const pre = $("#log-text");
    const atBottom = pre.scrollHeight - pre.scrollTop - pre.clientHeight < 40;
    fill(pre, text.length ? text.map(logLine) : "(empty)");
    if (atBottom || pre.dataset.file !== file) pre.scrollTop = pre.scrollHeight;
    pre.dataset.file = file;
  }

  function logLine(line) {
    const status = /\bstatus=(\w+)/.exec(line);
    return el("span", {class: status ? `log-${status[1]}` : null}, `${line}\n`);
  }

  // -- hosts: the hosts sharing the store (GET /api/hosts), a panel on the overview.
  // Kept together here: the panel refreshes with the stats (loadStats calls refetchHosts)
  // and on its own every HOSTS_INTERVAL, since heartbeats age while nothing else happens.

  const HOSTS_INTERVAL = 10000; // ms
  const shortHost = (id) => String(id).slice(0, 8); // as unique as a git short hash, here

  /** A host id as the page shows it: 8 characters, the full id on hover. */
  function hostId(id) {
    return el("code", {class: "host-id", title: `host ${id}`}, shortHost(id));
  }

  function renderHosts(hosts) {
    $("#hosts-count").textContent = `(${hosts.length})`;
    fill($("#hosts-body"), hosts.length ? hosts.map(hostRow)
      : el("tr", {class: "empty"}, el("td", {colspan: 6}, "No host has registered in the store.")));
  }

  function hostRow(host) {
    const state = host.state || (host.alive ? "alive" : "gone");
    return el("tr", {"data-host": host.id, "data-state": state, "data-leader": host.leader ? "" : null},
      el("td", {"data-col": "host"}, hostId(host.id),
        host.this ? el("span", {class: "note", title: "the host serving this page"}, "this host") : null),
      el("td", {class: "opt", "data-col": "address"}, host.url ? el("code", null, host.url) : el("span", {class: "muted"}, "–"),
        el("span", {class: "note"}, `${host.hostname}, pid ${host.pid}`)),
      el("td", {class: "num", "data-col": "heartbeat"}, timeAgo(host.heartbeat_at)),
      el("td", {class: "num", "data-col": "running"}, fmtInt(host.running)),
      el("td", {"data-col": "role"}, host.leader
        ? el("strong", {class: "leader", title: "runs the schedules, the pruner and rescues"}, "leader")
        : el("span", {class: "muted"}, "–")),
      el("td", {"data-col": "state"}, el("span", {class: "host-state"}, state)));
  }

  const loadHosts = latestOnly(async (current) => {
    if (state.route.view !== "overview") return; // as the other loaders: only the view on screen
    const body = await api.hosts();
    if (!current()) return;
    renderHosts(body.hosts);
  });

  const refetchHosts = throttle(loadHosts, REFETCH_INTERVAL);

  function startHostsPanel() {
    setInterval(() => {
      if (state.route.view === "overview" && document.visibilityState === "visible") refetchHosts();
    }, HOSTS_INTERVAL);
  }

  // -- chrome: connection state and the message bar

  function setConnection(kind, text) {
    const node = $("#conn");
    node.dataset.state = kind;
    node.textContent = text;
  }

  let noticeTimer = null;

  /** Show a message in the bar under the header (never alert()); sticky ones stay. */
  function notify(text, {kind = "error", sticky = false} = {}) {
    const bar = $("#notice");
    bar.dataset.kind = kind;
    $("#notice-text").textContent = text;
    bar.hidden = false;
    clearTimeout(noticeTimer);
    if (!sticky) noticeTimer = setTimeout(() => { bar.hidden = true; }, 10000);
  }

  function signedOut() {
    if (state.signedOut) return;
    state.signedOut = true;
    sessionStorage.removeItem(SESSION_KEY);
    live.stop();
    setConnection("offline", "signed out");
    notify("You are signed out (or the host's token changed). On the host's machine run " +
      "`asyncjobs dashboard` and open the sign-in link it prints.", {sticky: true});
  }

  function showView(view) {
    for (const name of ["overview", "job", "logs"]) $(`#view-${name}`).hidden = name !== view;
    for (const link of document.querySelectorAll("[data-nav]")) {
      link.setAttribute("aria-current", String(link.dataset.nav === (view === "job" ? "overview" : view)));
    }
    if (view !== "job") document.title = view === "logs" ? "Logs · asyncjobs" : "asyncjobs";
  }

  // ---- 5. loaders: fetch, store, render --------------------------------------------------

  /** Wrap a loader so a slow, older response never overwrites a newer one. */
  function latestOnly(load) {
    let generation = 0;
    return async function run() {
      const mine = ++generation;
      try {
        await load(() => mine === generation);
      } catch (err) {
        if (!(err instanceof ApiError)) throw err;
        if (err.status !== 401 && mine === generation) notify(err.readable);
      }
    };
  }

  // A throttled refetch fires up to a second after it was asked for, maybe on another view by
  // then: each loader does nothing unless its view is the one on screen (loadList would read
  // the job page's id as its id filter and fill the hidden table with that one job).
  const loadStats = latestOnly(async (current) => {
    if (state.route.view !== "overview") return;
    const stats = await api.stats();
    if (!current()) return;
    state.stats = stats;
    renderStats();
    refetchHosts();
  });

  const loadList = latestOnly(async (current) => {
    if (state.route.view !== "overview") return;
    const {status, cls, id} = state.route;
    const list = state.list;
    if (id) {
      let jobs = [];
      let missing = null;
      try {
        jobs = [await api.job(id)];
      } catch (err) {
        if (err.status !== 404 && err.status !== 422) throw err;
        missing = `No job with id ${id}.`;
      }
      if (!current()) return;
      Object.assign(list, {jobs, next: null, missing});
    } else {
      const page = await api.jobs({status, cls, cursor: list.cursors[list.page]});
      if (!current()) return;
      Object.assign(list, {jobs: page.jobs, next: page.next_cursor, missing: null});
    }
    renderJobs();
  });

  const loadJob = latestOnly(async (current) => {
    if (state.route.view !== "job") return;
    const id = state.route.id;
    try {
      const job = await api.job(id);
      const chain = job.chain_id === null ? [] : (await api.jobs({chain: job.chain_id})).jobs;
      if (!current()) return;
      state.job = job;
      state.chain = chain.sort((a, b) => a.id - b.id);
      state.jobMissing = null;
    } catch (err) {
      if (err.status !== 404 || !current()) throw err;
      state.job = null;
      state.jobMissing = `There is no job ${id} (it may have been pruned by the retention rules).`;
    }
    if (state.route.view === "job" && state.route.id === id) renderJobPage();
  });

  const loadLogs = latestOnly(async (current) => {
    if (state.route.view !== "logs") return;
    const {file, lines} = state.logs;
    const body = await api.logs(file, lines);
    if (!current()) return;
    state.logs.text = body.lines;
    renderLogs();
  });

  const refetch = {
    stats: throttle(loadStats, REFETCH_INTERVAL),
    list: throttle(loadList, REFETCH_INTERVAL),
    job: throttle(loadJob, REFETCH_INTERVAL),
    logs: throttle(loadLogs, LOG_REFETCH_INTERVAL),
    /** Everything the current view shows (after a reconnect or an overflow). */
    view() {
      const view = state.route.view;
      if (view === "overview") { refetch.stats(); refetch.list(); }
      if (view === "job") refetch.job();
      if (view === "logs") refetch.logs();
    },
  };

  // ---- 6. live: the event stream ---------------------------------------------------------

  function onJobEvent(event) {
    state.progress.delete(event.id); // a new state: the next progress event starts afresh
    const {view, id} = state.route;
    if (view === "overview") {
      refetch.stats();
      if (!id || Number(id) === event.id) refetch.list();
    } else if (view === "job" && id === event.id && shownStatus() !== event.status) {
      // The job on screen changed state: load it now, not on the throttle's next slot, which
      // can be a second away (after the stream's catch-up or the previous event), longer
      // than a short run lasts: the page would go from pending straight to completed.  A
      // job changes state a few times per attempt, so this cannot flood the host.
      loadJob();
    } else if (view === "job" && (id === event.id || state.chain.some((s) => s.id === event.id))) {
      refetch.job();
    } else if (view === "logs" && $("#log-follow").checked) {
      refetch.logs();
    }
  }

  /** The status the job page shows now, or null while its job is still loading. */
  function shownStatus() {
    return state.job && state.job.id === state.route.id ? state.job.status : null;
  }

  function onProgressEvent(event) {
    state.progress.set(event.id, {fraction: event.fraction, message: event.message});
    const {view, id} = state.route;
    if (view === "overview" && state.list.jobs.some((j) => j.id === event.id)) renderJobs();
    if (view === "job" && id === event.id) renderJobProgress();
  }

  const live = {
    source: null,
    opening: false,
    retryDelay: 2000,
    retryTimer: null,

    async start() {
      if (state.signedOut || this.source || this.opening) return;
      this.opening = true;
      let source;
      try {
        source = await api.events(); // a 401 here signs out instead of retrying forever
      } catch (err) {
        this.opening = false;
        this.retryLater();
        return;
      }
      this.opening = false;
      if (state.signedOut) {
        source.close();
        return;
      }
      this.source = source;
      source.addEventListener("open", () => {
        this.retryDelay = 2000;
        setConnection("live", "live");
        refetch.view(); // catch up on whatever happened while we were not listening
      });
      source.addEventListener("job", (e) => onJobEvent(JSON.parse(e.data)));
      source.addEventListener("progress", (e) => onProgressEvent(JSON.parse(e.data)));
      source.addEventListener("overflow", () => refetch.view());
      source.addEventListener("error", () => this.onError(source));
    },

    /** A ticket is good for one connection, so the browser's own reconnect (same URL)
     * cannot work: close the stream and reconnect with a fresh ticket after a back-off. */
    onError(source) {
      if (source !== this.source) return;
      this.stop();
      this.retryLater();
    },

    retryLater() {
      if (state.signedOut) return;
      setConnection("reconnecting", "reconnecting…");
      clearTimeout(this.retryTimer);
      this.retryTimer = setTimeout(() => {
        this.retryTimer = null;
        this.start();
      }, this.retryDelay);
      this.retryDelay = Math.min(RECONNECT_MAX, this.retryDelay * 2);
    },

    stop() {
      if (this.source) this.source.close();
      this.source = null;
      clearTimeout(this.retryTimer);
    },
  };

  // ---- 7. actions, router, boot --------------------------------------------------------------

  async function runAction(action, id) {
    state.busy.set(id, action);
    rerenderJob(id);
    try {
      const job = await api[action](id);
      state.busy.delete(id);
      state.progress.delete(id);
      applyJob(job);
      refetch.stats();
    } catch (err) {
      state.busy.delete(id);
      rerenderJob(id);
      if (!(err instanceof ApiError)) throw err;
      if (err.status !== 401) notify(`Could not ${action} job ${id}: ${err.readable}`);
      refetch.view(); // the job probably changed under us: show what it is now
    }
  }

  /** A job record fresh from the host (a POST's answer): update it wherever it is shown. */
  function applyJob(job) {
    const list = state.list.jobs;
    const i = list.findIndex((j) => j.id === job.id);
    if (i >= 0) list[i] = withoutHistory(job);
    if (state.job && state.job.id === job.id) state.job = job;
    rerenderJob(job.id);
  }

  function withoutHistory(job) {
    const copy = Object.assign({}, job);
    delete copy.attempt_history;
    return copy;
  }

  function rerenderJob(id) {
    if (state.route.view === "overview") renderJobs();
    if (state.route.view === "job" && state.route.id === id) renderJobPage();
  }

  function parseRoute() {
    const [path, query = ""] = location.hash.replace(/^#/, "").split("?");
    const params = new URLSearchParams(query);
    const job = /^\/jobs\/(\d+)$/.exec(path);
    if (job) return {view: "job", id: Number(job[1])};
    if (path === "/logs") return {view: "logs", file: params.get("file") === "errors" ? "errors" : "jobs"};
    const id = (params.get("id") || "").trim();
    return {view: "overview", status: params.get("status") || "", cls: params.get("class") || "",
      id: /^\d+$/.test(id) ? id : ""};
  }

  function overviewHash({status = "", cls = "", id = ""}) {
    const params = new URLSearchParams();
    if (status) params.set("status", status);
    if (cls) params.set("class", cls);
    if (id) params.set("id", id);
    const query = params.toString();
    return query ? `#/?${query}` : "#/";
  }

  function setFilters(changes) {
    location.hash = overviewHash(Object.assign({}, state.route, changes));
  }

  function route() {
    const next = parseRoute();
    state.route = next;
    showView(next.view);
    if (next.view === "overview") {
      const key = `${next.status}|${next.cls}|${next.id}`;
      if (key !== state.list.key) {
        Object.assign(state.list, {key, cursors: [null], page: 0, jobs: [], next: null, missing: null});
        rowCache.clear();
        fill($("#jobs-body"));
      }
      renderFilters();
      renderStats();
      loadStats();
      loadList();
    } else if (next.view === "job") {
      renderJobPage();
      loadJob();
    } else {
      state.logs.file = next.file;
      renderLogs();
      loadLogs();
    }
  }

  function turnPage(step) {
    const list = state.list;
    if (step > 0 && list.next) {
      list.cursors[list.page + 1] = list.next;
      list.page += 1;
    } else if (step < 0 && list.page > 0) {
      list.page -= 1;
    } else {
      return;
    }
    loadList();
  }

  function bindControls() {
    window.addEventListener("hashchange", route);
    $("#status-cards").addEventListener("click", (e) => {
      const card = e.target.closest(".card");
      if (card) setFilters({status: state.route.status === card.dataset.status ? "" : card.dataset.status, id: ""});
    });
    $("#filter-status").addEventListener("change", (e) => setFilters({status: e.target.value, id: ""}));
    $("#filter-class").addEventListener("change", (e) => setFilters({cls: e.target.value, id: ""}));
    $("#filters").addEventListener("submit", (e) => e.preventDefault());
    $("#id-search").addEventListener("submit", (e) => {
      e.preventDefault();
      const id = $("#search-id").value.trim();
      if (id && !/^\d+$/.test(id)) {
        notify(`"${id}" is not a job id: ids are whole numbers.`);
        return;
      }
      setFilters({id});
    });
    $("#search-id").addEventListener("search", (e) => { if (!e.target.value) setFilters({id: ""}); });
    $("#clear-filters").addEventListener("click", () => { location.hash = "#/"; });
    $("#page-newer").addEventListener("click", () => turnPage(-1));
    $("#page-older").addEventListener("click", () => turnPage(1));
    // One listener for every Retry/Cancel button, in the table and on the job page.
    $("main").addEventListener("click", (e) => {
      const button = e.target.closest("button[data-action]");
      if (button && !button.disabled) runAction(button.dataset.action, Number(button.dataset.id));
    });
    $("#notice-close").addEventListener("click", () => { $("#notice").hidden = true; });
    $("#log-refresh").addEventListener("click", () => loadLogs());
    document.addEventListener("visibilitychange", () => {
      if (document.visibilityState === "visible") refetch.view();
    });
  }

  function boot() {
    if (!session()) {
      location.replace("/login"); // says how to get a sign-in link
      return;
    }
    bindControls();
    route();
    live.start();
    setInterval(tickClock, CLOCK_TICK);
    startHostsPanel();
    setInterval(() => {
      if (state.route.view === "overview" && document.visibilityState === "visible") refetch.stats();
    }, STATS_FALLBACK);
  }

  boot();
})();
